package relay_test

import (
	"context"
	"io"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
	"github.com/outboxrelay/outboxrelay/relay"
)

// A batch that loses the broker mid-flight ends
// its transaction within seconds, releasing its row locks and the xmin
// horizon, and the relay then waits for the broker outside any
// transaction. The broker goes silent under a batch in flight (a proxy
// swallows every byte: publishes vanish, no confirm comes, nothing is
// reset), the test sees the batch's transaction open, then either waits
// (silent: the heartbeat notices) or cuts and refuses connections (cut: a
// broker that stays away). Within 10 s: no session of the relay idle in
// transaction, and every claimed row claimable by another relay.
func TestBatchDoesNotHoldATransactionAcrossAnOutage(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"silent", "cut"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := testenv.Services(t)
			dsn := testenv.NewSchema(t, true)
			app := testenv.Name("relay")
			pool := testenv.Pool(t, dsn)
			relayPool := testenv.Pool(t, dsn+"&application_name="+app)
			u, _ := url.Parse(env.AMQPURL)
			proxy := testenv.NewProxy(t, u.Host, true)
			u.Host = proxy.Addr()
			r := startRelay(t, relayPool, relay.Config{
				AMQPURLs:       []string{u.String()},
				Heartbeat:      time.Second,
				ConfirmTimeout: time.Hour, // only losing the broker may end the batch
				PollInterval:   10 * time.Millisecond,
				Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			ctx := context.Background()
			testenv.Eventually(t, 30*time.Second, "relay ready", func() (bool, error) {
				return r.Ready(ctx) == nil, nil
			})

			proxy.Hold(true)
			msgs := make([]outbox.Message, 100)
			for i := range msgs {
				msgs[i] = outbox.Message{RoutingKey: "nowhere", Payload: []byte(`{}`)}
			}
			if _, err := outbox.Enqueue(ctx, pool, msgs...); err != nil {
				t.Fatal(err)
			}
			inTx := func() (int, error) {
				var n int
				err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
					WHERE application_name = $1 AND state LIKE 'idle in transaction%'`, app).Scan(&n)
				return n, err
			}
			testenv.Eventually(t, 30*time.Second, "a batch in flight (its transaction open)", func() (bool, error) {
				n, err := inTx()
				return n > 0, err
			})
			if mode == "cut" {
				proxy.SetUp(false) // cut, and refuse reconnects from now on
			}
			testenv.Eventually(t, 10*time.Second, "no transaction left open and every row claimable", func() (bool, error) {
				n, err := inTx()
				if err != nil || n > 0 {
					return false, err
				}
				var free int
				err = pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT id FROM outbox
					WHERE published_at IS NULL FOR UPDATE SKIP LOCKED) x`).Scan(&free)
				return free == len(msgs), err
			})
		})
	}
}
