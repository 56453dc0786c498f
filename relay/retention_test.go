package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
	"github.com/outboxrelay/outboxrelay/relay"
)

// Under DeletePublished (retention: none) a confirmed row is deleted by
// the transaction that records its confirm, in the same round trip as a
// mark; a row that failed stays, charged, for its retry; and a row
// published earlier (before the switch) is deleted by retention.
func TestDeletePublishedKeepsOnlyUnpublishedRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, true)

	// A row published before the switch, as a relay keeping rows left it.
	var old int64
	if err := pool.QueryRow(ctx, `INSERT INTO outbox (routing_key, payload) VALUES ($1, 'old') RETURNING id`, queue).Scan(&old); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE outbox SET published_at = now() - interval '1 minute' WHERE id = $1`, old); err != nil {
		t.Fatal(err)
	}
	bad, err := outbox.Enqueue(ctx, pool, outbox.Message{Exchange: testenv.Name("missing"), RoutingKey: "k", Payload: []byte("no exchange")})
	if err != nil {
		t.Fatal(err)
	}
	good, err := outbox.Enqueue(ctx, pool,
		outbox.Message{RoutingKey: queue, Payload: []byte("one")},
		outbox.Message{RoutingKey: queue, Payload: []byte("two"), OrderingKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	batches := make(chan relay.BatchResult, 100)
	startRelay(t, pool, relay.Config{
		AMQPURLs: []string{env.AMQPURL}, PollInterval: time.Hour, Logger: testLogger(),
		DeletePublished: true, RetentionInterval: 10 * time.Millisecond,
		OnBatch: func(r relay.BatchResult) { batches <- r },
	})
	b := &testBundle{batches: batches}
	b.waitPublished(t, good...)
	if got := testenv.Consume(t, ch, queue, 2, 10*time.Second); string(got[0].Body)+string(got[1].Body) != "onetwo" {
		t.Fatalf("got %q and %q", got[0].Body, got[1].Body)
	}
	var left int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE message_id = ANY($1)`, good).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Fatalf("%d published rows kept under DeletePublished, want 0", left)
	}
	testenv.Eventually(t, 30*time.Second, "the failed row charged and kept", func() (bool, error) {
		var attempts int
		err := pool.QueryRow(ctx, `SELECT attempts FROM outbox WHERE message_id = $1 AND published_at IS NULL`, bad[0]).Scan(&attempts)
		return attempts > 0, err
	})
	testenv.Eventually(t, 30*time.Second, "the row published before the switch deleted by retention", func() (bool, error) {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE id = $1`, old).Scan(&n)
		return n == 0, err
	})
}
