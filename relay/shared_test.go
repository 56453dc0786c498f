package relay_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
	"github.com/outboxrelay/outboxrelay/relay"
)

// A row whose attempts is at the int maximum (or negative), written by
// the table's owner or an older relay, fails its attempt: the mark must
// not overflow and roll back the batch (its good rows would be published
// again on every retry), and the negative one must still die after
// MaxAttempts.
func TestHostileAttemptsDoNotStallTheBatch(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *relay.Config) {
		c.MaxAttempts = 2
		c.RetryBase, c.RetryMax = time.Millisecond, time.Millisecond
		c.PollInterval = 20 * time.Millisecond
	})
	ctx := context.Background()
	msgs := make([]outbox.Message, 100)
	for i := range msgs {
		msgs[i] = outbox.Message{RoutingKey: b.queue, Payload: []byte(`{}`)}
	}
	good, err := outbox.Enqueue(ctx, b.pool, msgs...)
	if err != nil {
		t.Fatal(err)
	}
	var maxed string
	if err := b.pool.QueryRow(ctx, `INSERT INTO outbox (exchange, routing_key, payload, attempts)
		VALUES ('no-such-exchange', 'q', 'x', 2147483647) RETURNING message_id::text`).Scan(&maxed); err != nil {
		t.Fatal(err)
	}
	more, err := outbox.Enqueue(ctx, b.pool, msgs...)
	if err != nil {
		t.Fatal(err)
	}
	good = append(good, more...)
	var negative string
	if err := b.pool.QueryRow(ctx, `INSERT INTO outbox (exchange, routing_key, payload, attempts)
		VALUES ('no-such-exchange', 'q', 'x', -2147483648) RETURNING message_id::text`).Scan(&negative); err != nil {
		t.Fatal(err)
	}
	b.waitPublished(t, good...)
	for _, id := range []string{maxed, negative} {
		testenv.Eventually(t, 30*time.Second, "the hostile row "+id+" dead", func() (bool, error) {
			dead, _ := deadState(t, b.pool, id)
			return dead, nil
		})
	}
	// Each good row went out once: the batch was never rolled back after
	// its confirms.
	testenv.Eventually(t, 30*time.Second, "the queue to hold the good rows", func() (bool, error) {
		q, err := b.ch.QueueDeclarePassive(b.queue, false, false, false, false, nil)
		return q.Messages >= len(good), err
	})
	q, err := b.ch.QueueDeclarePassive(b.queue, false, false, false, false, nil)
	if err != nil || q.Messages != len(good) {
		t.Fatalf("queue holds %d messages (%v), want the %d good rows once each", q.Messages, err, len(good))
	}
}

// Any role may NOTIFY the relay's channel, and PostgreSQL cannot stop it.
// A loop of notifications with nothing to claim must not keep the workers
// claiming back to back: after a wake-up that found nothing, a worker
// ignores notifications for EmptyWakeHoldoff, so at any moment the empty
// claims number at most a few per worker per hold-off since the flood
// began, however many notifications were sent. A row inserted during the
// flood is still published.
func TestNotifyFloodIsDamped(t *testing.T) {
	t.Parallel()
	const workers = 2
	reg := prometheus.NewRegistry()
	b := setup(t, func(c *relay.Config) { c.Workers = workers; c.Registerer = reg })
	ctx := context.Background()
	testenv.Eventually(t, 30*time.Second, "the listener to listen", func() (bool, error) {
		return counter(t, reg, "outboxrelay_relay_listener_connected") == 1, nil
	})
	var channel string
	if err := b.pool.QueryRow(ctx, `SELECT current_schema() || '.outbox'`).Scan(&channel); err != nil {
		t.Fatal(err)
	}
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	const notifications = 3000
	start := time.Now()
	var row []string
	for i := range notifications {
		if _, err := conn.Exec(ctx, `SELECT pg_notify($1, $2)`, channel, strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
		if i == notifications/2 {
			if row, err = outbox.Enqueue(ctx, b.pool, outbox.Message{RoutingKey: b.queue, Payload: []byte(`{}`)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	empty := counter(t, reg, "outboxrelay_relay_empty_wakeups_total")
	elapsed := time.Since(start)
	bound := workers * (float64(elapsed/relay.EmptyWakeHoldoff) + 2)
	t.Logf("%d notifications in %s: %v empty claims (bound %v)", notifications, elapsed, empty, bound)
	if empty < 1 {
		t.Errorf("no empty wake-up counted over %d notifications: are they honoured?", notifications)
	}
	if empty > bound {
		t.Errorf("%v empty claims in %s, want at most %v: the flood keeps the workers claiming", empty, elapsed, bound)
	}
	b.waitPublished(t, row...)
}
