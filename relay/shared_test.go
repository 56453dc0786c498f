package relay_test

import (
	"context"
	"testing"
	"time"

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
