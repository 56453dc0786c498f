package test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// Exactly once through the whole chain: rows enqueued with outbox.Enqueue
// are published by two relay processes that are SIGKILLed and restarted
// during the drain, and
// consumed through the inbox into a business table. Kills cause republished
// duplicates; the business table still holds every row exactly once.
func TestChainEnqueueRelayKillsInboxExactlyOnce(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE orders_applied (order_id int NOT NULL, total_cents int NOT NULL)`); err != nil {
		t.Fatal(err)
	}

	conn, err := amqp.Dial(env.AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	topo := inbox.Topology{Exchange: testenv.Name("orders"), Queue: testenv.Name("chain"), BindingKeys: []string{"order.*"},
		RetryDelays: []time.Duration{50 * time.Millisecond}}
	if err := inbox.DeclareTopology(ctx, ch, topo); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, q := range []string{topo.Queue, inbox.DeadQueue(topo.Queue), inbox.RetryQueue(topo.Queue, topo.RetryDelays[0])} {
			_, _ = ch.QueueDelete(q, false, false, false)
		}
		_ = ch.ExchangeDelete(topo.Exchange, false, false)
	})

	var mu sync.Mutex
	duplicates := 0
	consumer, err := inbox.New(inbox.Config{
		Queue:       topo.Queue,
		Name:        "chain-test",
		DB:          pool,
		AMQPURLs:    []string{env.AMQPURL},
		Concurrency: 4,
		RetryDelays: topo.RetryDelays,
		Handler: func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
			var id, cents int
			if _, err := fmt.Sscanf(string(m.Body), `{"order_id":%d,"total_cents":%d}`, &id, &cents); err != nil {
				return inbox.Permanent(err)
			}
			_, err := tx.Exec(ctx, `INSERT INTO orders_applied VALUES ($1, $2)`, id, cents)
			return err
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnEvent: func(e inbox.Event) {
			if e.Kind == inbox.EventDuplicate {
				mu.Lock()
				duplicates++
				mu.Unlock()
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, consumer)

	relayEnv := []string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + env.AMQPURL,
		"RELAY_BATCH_SIZE=25", "RELAY_RECONNECT_MAX=200ms"}
	relays := []*testenv.RelayProc{startRelay(t, relayEnv...), startRelay(t, relayEnv...)}

	// Enqueue in chunks; after each chunk, wait until the relays are
	// publishing it, then SIGKILL one of them mid-drain and start a new one.
	const chunks, perChunk = 10, 200
	kills := 0
	for c := range chunks {
		msgs := make([]outbox.Message, perChunk)
		for i := range msgs {
			id := c*perChunk + i + 1
			msgs[i] = outbox.Message{Exchange: topo.Exchange, RoutingKey: "order.created",
				Payload: []byte(fmt.Sprintf(`{"order_id":%d,"total_cents":%d}`, id, id*100))}
		}
		var last int64
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := outbox.Enqueue(ctx, tx, msgs...); err != nil {
				return err
			}
			return tx.QueryRow(ctx, `SELECT max(id) FROM outbox`).Scan(&last)
		})
		if err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, time.Minute, "the relays to publish from the new chunk", func() (bool, error) {
			var n int
			err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NOT NULL AND id > $1`, last-perChunk).Scan(&n)
			return n > 0, err
		})
		victim := relays[c%2]
		victim.Kill() // SIGKILL: no cleanup, claims end with its connections
		kills++
		relays[c%2] = startRelay(t, relayEnv...)
	}

	const total = chunks * perChunk
	testenv.Eventually(t, 2*time.Minute, "every order applied", func() (bool, error) {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(DISTINCT order_id) FROM orders_applied`).Scan(&n)
		return n == total, err
	})
	var rows, distinct, sum, min, max int
	if err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT order_id), sum(total_cents), min(order_id), max(order_id) FROM orders_applied`).
		Scan(&rows, &distinct, &sum, &min, &max); err != nil {
		t.Fatal(err)
	}
	if rows != total || distinct != total || min != 1 || max != total || sum != 100*total*(total+1)/2 {
		t.Fatalf("business table: %d rows, %d distinct, ids %d..%d, sum %d; want each of 1..%d exactly once", rows, distinct, min, max, sum, total)
	}
	var unpublished int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&unpublished); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d rows, %d relay kills, %d duplicates absorbed by the inbox, %d rows still unmarked", total, kills, duplicates, unpublished)
}
