//go:build fault

package fault

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// The scenarios run one after another (no t.Parallel): several of them
// stop shared services.

func TestKillRelaysRepeatedly(t *testing.T) {
	run(t, "sigkill relays every 1-3s", drain{rows: 20_000, rate: 1000, relays: 2}, func(ctx context.Context, h *harness) int {
		stop := testenv.KillLoop(h.relays, time.Second, 3*time.Second)
		<-ctx.Done()
		return stop()
	})
}

func TestBrokerRestarts(t *testing.T) {
	run(t, "rabbitmq stopped+started x2", drain{rows: 10_000, rate: 500, relays: 2}, func(ctx context.Context, h *harness) int {
		n := 0
		for range 2 {
			if !pause(ctx, 3*time.Second) {
				break
			}
			testenv.ServicesCmd(t, "rabbit-stop")
			testenv.ServicesCmd(t, "rabbit-start")
			n++
		}
		return n
	})
}

func TestConnectionsCut(t *testing.T) {
	env := testenv.Services(t)
	u, _ := url.Parse(env.AMQPURL)
	proxy := testenv.NewProxy(t, u.Host, true)
	u.Host = proxy.Addr()
	run(t, "connections cut x10", drain{rows: 10_000, rate: 1000, relays: 2, amqpURL: u.String()}, func(ctx context.Context, h *harness) int {
		n := 0
		for n < 10 {
			if !pause(ctx, 500*time.Millisecond+rand.N(500*time.Millisecond)) {
				break
			}
			proxy.Cut()
			n++
		}
		return n
	})
}

func TestPostgresRestarts(t *testing.T) {
	run(t, "postgres restarted x2", drain{rows: 10_000, rate: 500, relays: 2}, func(ctx context.Context, h *harness) int {
		n := 0
		for range 2 {
			if !pause(ctx, 4*time.Second) {
				break
			}
			testenv.ServicesCmd(t, "pg-restart")
			n++
		}
		return n
	})
}

func TestClusterNodeFailover(t *testing.T) {
	urls := clusterURLs(t)
	t.Cleanup(func() { testenv.ServicesCmd(t, "cluster-down") })
	// The relays list node 1 first, so they connect there; the queue is
	// declared and read through node 2.
	list := strings.Join(urls, ",")
	consume := strings.Join([]string{urls[1], urls[2], urls[0]}, ",")
	run(t, "cluster: connected node down", drain{rows: 10_000, rate: 500, relays: 2, amqpURL: list, consume: consume}, func(ctx context.Context, h *harness) int {
		if !pause(ctx, 4*time.Second) {
			return 0
		}
		testenv.ServicesCmd(t, "node-stop", "1")
		pause(ctx, 4*time.Second)
		testenv.ServicesCmd(t, "node-start", "1")
		return 1
	})
}

func TestResourceAlarmPausesPublishing(t *testing.T) {
	run(t, "memory alarm blocks publish", drain{rows: 5_000, rate: 500, relays: 1}, func(ctx context.Context, h *harness) int {
		if !pause(ctx, 2*time.Second) {
			return 0
		}
		testenv.ServicesCmd(t, "rabbitmqctl", "0", "set_vm_memory_high_watermark", "0.000001")
		defer testenv.ServicesCmd(t, "rabbitmqctl", "0", "set_vm_memory_high_watermark", "0.4")
		testenv.Eventually(t, time.Minute, "the relay to report the broker blocked", func() (bool, error) {
			return h.relays[0].Metric("outboxrelay_relay_broker_blocked") == "1", nil
		})
		// While blocked the relay claims nothing new: at most the batches
		// already in flight (one per worker) complete.
		var before, after int
		_ = h.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE published_at IS NOT NULL`).Scan(&before)
		pause(ctx, 2*time.Second)
		_ = h.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE published_at IS NOT NULL`).Scan(&after)
		if after-before > 2*200 {
			t.Errorf("%d rows were published while the broker was blocked, more than the batches in flight", after-before)
		}
		return 1
	})
}

// pause waits d unless ctx ends first; it reports whether d passed.
func pause(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

func clusterURLs(t *testing.T) []string {
	out := testenv.ServicesCmd(t, "cluster-up")
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "RELAY_TEST_CLUSTER_AMQP_URLS="); ok {
			return strings.Split(strings.Trim(v, `'"`), ",")
		}
	}
	t.Fatalf("cluster-up printed no URLs:\n%s", out)
	return nil
}

// A payload the broker refuses (over its max_message_size) closes the
// publishing channel. Only that row may be charged: the relay republishes
// the batch's unconfirmed rows one at a time to find it, and the rows
// around it arrive.
func TestBrokerRefusesOversizePayload(t *testing.T) {
	env := testenv.Services(t)
	testenv.ServicesCmd(t, "rabbitmqctl", "0", "eval", "application:set_env(rabbit, max_message_size, 65536).")
	t.Cleanup(func() {
		testenv.ServicesCmd(t, "rabbitmqctl", "0", "eval", "application:set_env(rabbit, max_message_size, 134217728).")
	})
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, true)
	ctx := context.Background()
	msgs := make([]outbox.Message, 0, 201)
	for i := range 201 {
		body := []byte(fmt.Sprintf(`{"n":%d}`, i))
		if i == 100 {
			body = make([]byte, 100_000) // over the broker's limit, under the relay's
		}
		msgs = append(msgs, outbox.Message{RoutingKey: queue, Payload: body})
	}
	ids, err := outbox.Enqueue(ctx, pool, msgs...)
	if err != nil {
		t.Fatal(err)
	}
	settings := append([]string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + env.AMQPURL}, relaySettings...)
	testenv.StartRelayProc(t, append(settings, "RELAY_MAX_ATTEMPTS=2")...) // later assignments win
	testenv.Eventually(t, time.Minute, "the oversize row to be parked dead", func() (bool, error) {
		var dead bool
		err := pool.QueryRow(ctx, `SELECT dead_at IS NOT NULL FROM outbox WHERE message_id = $1`, ids[100]).Scan(&dead)
		return dead, err
	})
	var lastErr string
	var attempts int
	if err := pool.QueryRow(ctx, `SELECT last_error, attempts FROM outbox WHERE message_id = $1`, ids[100]).Scan(&lastErr, &attempts); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(lastErr, "channel_closed") || !strings.Contains(lastErr, "PRECONDITION_FAILED") || attempts != 2 {
		t.Errorf("oversize row: attempts %d, last_error %q", attempts, lastErr)
	}
	// The rows that shared the culprit's batch are suspects, published one at
	// a time after it: the culprit can die before the last of them is sent.
	testenv.Eventually(t, time.Minute, "the 200 other rows published", func() (bool, error) {
		var others int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NOT NULL AND message_id <> $1`, ids[100]).Scan(&others)
		return others == 200, err
	})
	var charged int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE attempts > 0 AND message_id <> $1`, ids[100]).Scan(&charged); err != nil {
		t.Fatal(err)
	}
	if charged != 0 {
		t.Errorf("%d of the 200 other rows were charged an attempt; want 0", charged)
	}
	got := testenv.Consume(t, ch, queue, 200, 30*time.Second)
	for _, d := range got {
		if d.MessageId == ids[100] {
			t.Error("the oversize message arrived")
		}
	}
}
