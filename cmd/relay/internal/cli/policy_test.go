package cli

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// With park_unroutable set, `relay run` parks a row the broker returned
// as unroutable, and one sent to an exchange that does not exist, dead at
// their first failed attempt, with the reason; a routable row beside them
// is published. Without the key, the same rows are retried (failing, not
// dead).
func TestParkUnroutableParksAtTheFirstFailure(t *testing.T) {
	t.Parallel()
	services := testenv.Services(t)
	for _, park := range []bool{true, false} {
		t.Run(map[bool]string{true: "park_unroutable=true", false: "default"}[park], func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dsn := testenv.NewSchema(t, true)
			pool := testenv.Pool(t, dsn)
			_, ch := testenv.AMQP(t, services.AMQPURL)
			queue := testenv.Queue(t, ch, false)
			var unroutable, noExchange, good int64
			if err := pool.QueryRow(ctx, `
WITH r AS (
  INSERT INTO outbox (exchange, routing_key, payload, content_type) VALUES
    ('', $1, 'x', 'text/plain'),
    ($2, 'k', 'x', 'text/plain'),
    ('', $3, 'x', 'text/plain')
  RETURNING id)
SELECT min(id), min(id) + 1, max(id) FROM r`, testenv.Name("nobody-bound"), testenv.Name("no-such-exchange"), queue).
				Scan(&unroutable, &noExchange, &good); err != nil {
				t.Fatal(err)
			}
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan string, 1)
			go func() {
				env := []string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + services.AMQPURL, "RELAY_HTTP_ADDR=",
					"RELAY_POLL_INTERVAL=50ms"}
				if park {
					env = append(env, "RELAY_PARK_UNROUTABLE=true")
				}
				code, _, errOut := runMain(t, rctx, env, "run")
				if code != exitOK {
					done <- fmt.Sprintf("exit %d: %s", code, errOut)
					return
				}
				done <- ""
			}()
			defer func() {
				cancel()
				if msg := <-done; msg != "" {
					t.Errorf("relay run: %s", msg)
				}
			}()

			testenv.Consume(t, ch, queue, 1, 30*time.Second)
			type state struct {
				attempts int
				dead     bool
				err      string
			}
			read := func(id int64) state {
				var s state
				if err := pool.QueryRow(ctx, `SELECT attempts, dead_at IS NOT NULL, coalesce(last_error, '') FROM outbox WHERE id = $1`, id).
					Scan(&s.attempts, &s.dead, &s.err); err != nil {
					t.Fatal(err)
				}
				return s
			}
			testenv.Eventually(t, 30*time.Second, "both rows to fail once", func() (bool, error) {
				return read(unroutable).attempts >= 1 && read(noExchange).attempts >= 1, nil
			})
			for id, reason := range map[int64]string{unroutable: "unroutable: ", noExchange: "no_exchange: "} {
				s := read(id)
				if !strings.HasPrefix(s.err, reason) {
					t.Errorf("row %d: last_error %q, want it to start with %q", id, s.err, reason)
				}
				if park && (!s.dead || s.attempts != 1) {
					t.Errorf("row %d with park_unroutable: dead %v after %d attempt(s), want dead after 1", id, s.dead, s.attempts)
				}
				if !park && s.dead {
					t.Errorf("row %d without park_unroutable: dead after %d attempt(s), want it retried", id, s.attempts)
				}
			}
		})
	}
}
