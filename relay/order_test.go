package relay_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
	"github.com/outboxrelay/outboxrelay/relay"
)

// Per key, id order is commit order. The shape that breaks it without the
// insert trigger: transaction T inserts a row of key K and draws its id
// while E, which already wrote K, is still open; E then writes K again (a
// higher id) and commits first; T commits last with the lowest id, and a
// relay that published E's rows has already passed it. With the trigger, T
// waits for E's lock on K and only then draws its id, above all of E's.
// The test runs the shape three ways and checks each outcome: without a
// key (the gap happens: nothing orders unkeyed rows), keyed without the
// trigger (the gap happens), and keyed with it (no gap).
func TestKeyedInsertsGetIdsInCommitOrder(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		keyed   bool
		trigger bool
		wantGap bool
	}{
		{"unkeyed", false, true, true},
		{"keyed without the trigger", true, false, true},
		{"keyed", true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool := testenv.Pool(t, testenv.NewSchema(t, true))
			ctx := context.Background()
			if !tc.trigger {
				if _, err := pool.Exec(ctx, `DROP TRIGGER outbox_order_key ON outbox`); err != nil {
					t.Fatal(err)
				}
			}
			var key any
			if tc.keyed {
				key = testenv.Name("k")
			}
			const ins = `INSERT INTO outbox (routing_key, payload, ordering_key) VALUES ('q', '\x00', $1) RETURNING id`
			e, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = e.Rollback(ctx) }()
			var eFirst, eSecond, tID int64
			if err := e.QueryRow(ctx, ins, key).Scan(&eFirst); err != nil {
				t.Fatal(err)
			}
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback(ctx) }()
			var tPID int
			if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&tPID); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- tx.QueryRow(ctx, ins, key).Scan(&tID) }()
			if tc.keyed && tc.trigger {
				testenv.Eventually(t, 30*time.Second, "T to wait for E's lock on the key", func() (bool, error) {
					var waiting bool
					err := pool.QueryRow(ctx, `SELECT coalesce(wait_event = 'advisory', false) FROM pg_stat_activity WHERE pid = $1`, tPID).Scan(&waiting)
					return waiting, err
				})
			} else if err := <-done; err != nil {
				t.Fatal(err)
			}
			if err := e.QueryRow(ctx, ins, key).Scan(&eSecond); err != nil {
				t.Fatal(err)
			}
			if err := e.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if tc.keyed && tc.trigger {
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			// T committed after both of E's rows.
			gap := tID < eSecond
			t.Logf("E's rows %d and %d committed first, T's row %d last", eFirst, eSecond, tID)
			if gap != tc.wantGap {
				t.Fatalf("T's row %d committed after E's row %d: gap %v, want %v", tID, eSecond, gap, tc.wantGap)
			}
		})
	}
}

// The block policy holds a key's later rows while an earlier row is dead;
// requeueing it releases them in order. Skip lets them pass.
func TestOrderingPolicyOnDeadRows(t *testing.T) {
	t.Parallel()
	for _, policy := range []relay.OrderingPolicy{relay.OrderingBlock, relay.OrderingSkip} {
		t.Run(string(policy), func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(c *relay.Config) {
				c.OrderingPolicy = policy
				// Strict: "second" is not sent while "first" is
				// unconfirmed, so it is the dead-row policy alone that
				// decides when it goes. (Pipelined, "second" would be
				// confirmed in the same run as the returned "first": an
				// overtake, see TestOvertakeIsCounted.)
				c.StrictOrdering = true
				c.MaxAttempts = 2
				c.RetryBase, c.RetryMax = time.Millisecond, time.Millisecond
				c.PollInterval = 10 * time.Millisecond
			})
			ctx := context.Background()
			key := testenv.Name("order")
			unbound := testenv.Name("unbound")
			ids, err := outbox.Enqueue(ctx, b.pool,
				outbox.Message{Exchange: "amq.direct", RoutingKey: unbound, Payload: []byte("first"), OrderingKey: key},
				outbox.Message{RoutingKey: b.queue, Payload: []byte("second"), OrderingKey: key},
			)
			if err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 30*time.Second, "the first row to die", func() (bool, error) {
				var dead bool
				err := b.pool.QueryRow(ctx, `SELECT dead_at IS NOT NULL FROM outbox WHERE message_id = $1`, ids[0]).Scan(&dead)
				return dead, err
			})
			st, err := relay.ReadStatus(ctx, b.pool)
			if err != nil {
				t.Fatal(err)
			}
			if st.BlockedKeys != 1 {
				t.Errorf("status: %d keys with a dead row, want 1", st.BlockedKeys)
			}
			// A sentinel without key, written after: once it is out, the
			// relay has had every chance to publish "second".
			sentinel, err := outbox.Enqueue(ctx, b.pool, outbox.Message{RoutingKey: b.queue, Payload: []byte("sentinel")})
			if err != nil {
				t.Fatal(err)
			}
			if policy == relay.OrderingSkip {
				b.waitPublished(t, append(sentinel, ids[1])...)
				return
			}
			b.waitPublished(t, sentinel...)
			if published(t, b.pool, ids[1]) {
				t.Fatal("block policy: the key's second row was published while the first is dead")
			}
			// Route the first row, requeue it: both go, in order.
			if err := b.ch.QueueBind(b.queue, unbound, "amq.direct", false, nil); err != nil {
				t.Fatal(err)
			}
			var rowID int64
			if err := b.pool.QueryRow(ctx, `SELECT id FROM outbox WHERE message_id = $1`, ids[0]).Scan(&rowID); err != nil {
				t.Fatal(err)
			}
			if _, err := relay.Requeue(ctx, b.pool, []int64{rowID}); err != nil {
				t.Fatal(err)
			}
			b.waitPublished(t, ids...)
			got := testenv.Consume(t, b.ch, b.queue, 3, 30*time.Second)
			if got[1].MessageId != ids[0] || got[2].MessageId != ids[1] {
				t.Fatalf("arrival order %s, %s, %s; want sentinel, first, second", got[0].Body, got[1].Body, got[2].Body)
			}
		})
	}
}

func published(t *testing.T, pool *pgxpool.Pool, messageID string) bool {
	t.Helper()
	var p bool
	if err := pool.QueryRow(context.Background(), `SELECT published_at IS NOT NULL FROM outbox WHERE message_id = $1`, messageID).Scan(&p); err != nil {
		t.Fatal(err)
	}
	return p
}

// Retention deletes old published rows and leaves
// pending, dead and recent rows alone, with two relays running it at once.
func TestRetentionDeletesOnlyOldPublishedRows(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	ctx := context.Background()
	_, err := pool.Exec(ctx, `
		INSERT INTO outbox (routing_key, payload, published_at, available_at, dead_at)
		SELECT 'q', '\x00',
		       CASE WHEN g <= 2500 THEN now() - interval '2 days'   -- old published: to delete
		            WHEN g <= 2600 THEN now() - interval '1 hour' END, -- recent published: kept
		       CASE WHEN g > 2600 THEN now() + interval '1 day' ELSE now() END, -- pending, not due: kept
		       CASE WHEN g > 2700 THEN now() - interval '3 days' END             -- dead: kept
		FROM generate_series(1, 2800) g`)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		startRelay(t, pool, relay.Config{
			AMQPURLs:          []string{env.AMQPURL},
			Retention:         24 * time.Hour,
			RetentionInterval: 10 * time.Millisecond,
			RetentionBatch:    100,
			Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
	}
	testenv.Eventually(t, time.Minute, "old published rows to be deleted", func() (bool, error) {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at < now() - interval '1 day'`).Scan(&n)
		return n == 0, err
	})
	var recent, pending, dead int
	err = pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE published_at IS NOT NULL),
		count(*) FILTER (WHERE published_at IS NULL AND dead_at IS NULL),
		count(*) FILTER (WHERE dead_at IS NOT NULL) FROM outbox`).Scan(&recent, &pending, &dead)
	if err != nil {
		t.Fatal(err)
	}
	if recent != 100 || pending != 100 || dead != 100 {
		t.Fatalf("kept %d recent published, %d pending, %d dead; want 100 each", recent, pending, dead)
	}
}

// A backlog of one ordering key drains without waiting for wake-ups: only
// a key's head is claimable, so after publishing it the relay claims again
// at once instead of waiting for the poll interval (an hour here).
func TestKeyBacklogDrainsWithoutPolling(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, false)
	ctx := context.Background()

	msgs := make([]outbox.Message, 30)
	for i := range msgs {
		msgs[i] = outbox.Message{RoutingKey: queue, OrderingKey: "one-key", Payload: []byte{byte(i)}}
	}
	ids, err := outbox.Enqueue(ctx, pool, msgs...) // one statement: one wake-up
	if err != nil {
		t.Fatal(err)
	}
	startRelay(t, pool, relay.Config{
		AMQPURLs:     []string{env.AMQPURL},
		PollInterval: time.Hour,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	got := testenv.Consume(t, ch, queue, len(ids), time.Minute)
	for i, d := range got {
		if d.MessageId != ids[i] {
			t.Fatalf("message %d is %s, want %s (out of order)", i, d.MessageId, ids[i])
		}
	}
}

// A broker that refuses a keyed row (a
// queue at its x-max-length with x-overflow reject-publish nacks it) while
// it takes the key's next rows (routed to another queue). Pipelined (the
// default), the later rows of the run were already sent: they are
// confirmed, counted as overtaking, and the key's rows written afterwards
// wait behind the refused row (block policy). Strict, the key's next row
// is never sent while the refused one is unconfirmed: nothing overtakes,
// and the whole rest of the key waits.
func TestOvertakeIsCounted(t *testing.T) {
	t.Parallel()
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			t.Parallel()
			reg := prometheus.NewRegistry()
			b := setup(t, func(c *relay.Config) {
				c.StrictOrdering = strict
				c.Registerer = reg
				c.MaxAttempts = 1000
				c.RetryBase, c.RetryMax = time.Hour, time.Hour // the refused row stays refused
			})
			ctx := context.Background()
			full := testenv.Name("full")
			if _, err := b.ch.QueueDeclare(full, false, true, false, false, amqp.Table{
				"x-max-length": int32(1), "x-overflow": "reject-publish",
			}); err != nil {
				t.Fatal(err)
			}
			if err := b.ch.PublishWithContext(ctx, "", full, false, false, amqp.Publishing{Body: []byte("filler")}); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 30*time.Second, "the queue to be full", func() (bool, error) {
				q, err := b.ch.QueueDeclarePassive(full, false, true, false, false, nil)
				return q.Messages == 1, err
			})

			key := testenv.Name("k")
			ids, err := outbox.Enqueue(ctx, b.pool,
				outbox.Message{RoutingKey: full, Payload: []byte("1"), OrderingKey: key},
				outbox.Message{RoutingKey: b.queue, Payload: []byte("2"), OrderingKey: key},
				outbox.Message{RoutingKey: b.queue, Payload: []byte("3"), OrderingKey: key},
			)
			if err != nil {
				t.Fatal(err)
			}
			// Pipelined, the broker took rows 2 and 3 beside the nacked
			// row 1, so the nack is row 1's own and charges it. Strict,
			// row 1 went alone and was nacked alone: that says nothing
			// about the row (a node that takes nothing nacks every
			// message), so it is deferred, noted but not charged.
			b.waitRefused(t)
			var lastErr string
			var attempts int
			if err := b.pool.QueryRow(ctx, `SELECT last_error, attempts FROM outbox WHERE message_id = $1`, ids[0]).Scan(&lastErr, &attempts); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(lastErr, "nacked") {
				t.Fatalf("refused row's last_error %q, want a nack", lastErr)
			}
			if wantAttempts := map[bool]int{false: 1, true: 0}[strict]; attempts != wantAttempts {
				t.Fatalf("refused row's attempts = %d, want %d", attempts, wantAttempts)
			}

			later, err := outbox.Enqueue(ctx, b.pool, outbox.Message{RoutingKey: b.queue, Payload: []byte("4"), OrderingKey: key})
			if err != nil {
				t.Fatal(err)
			}
			sentinel, err := outbox.Enqueue(ctx, b.pool, outbox.Message{RoutingKey: b.queue, Payload: []byte("sentinel")})
			if err != nil {
				t.Fatal(err)
			}
			b.waitPublished(t, sentinel...)

			overtaken := counter(t, reg, "outboxrelay_relay_ordering_overtaken_total")
			wantOvertaken, wantPublished := 2.0, map[string]bool{ids[1]: true, ids[2]: true}
			if strict {
				wantOvertaken, wantPublished = 0, map[string]bool{}
			}
			if overtaken != wantOvertaken {
				t.Errorf("ordering_overtaken_total = %v, want %v", overtaken, wantOvertaken)
			}
			for _, id := range append(ids, later...) {
				if got := published(t, b.pool, id); got != wantPublished[id] {
					t.Errorf("row %s published = %v, want %v", id, got, wantPublished[id])
				}
			}
		})
	}
}

// A key's run stops before its first row that is not due: the rows after
// it wait, though they are due themselves (a run is a prefix of the key's
// queue, never a selection from it).
func TestRunStopsAtARowNotYetDue(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()
	key := testenv.Name("k")
	ids, err := outbox.Enqueue(ctx, b.pool,
		outbox.Message{RoutingKey: b.queue, Payload: []byte("1"), OrderingKey: key},
		outbox.Message{RoutingKey: b.queue, Payload: []byte("2"), OrderingKey: key, AvailableAt: time.Now().Add(time.Hour)},
		outbox.Message{RoutingKey: b.queue, Payload: []byte("3"), OrderingKey: key},
	)
	if err != nil {
		t.Fatal(err)
	}
	sentinel, err := outbox.Enqueue(ctx, b.pool, outbox.Message{RoutingKey: b.queue, Payload: []byte("sentinel")})
	if err != nil {
		t.Fatal(err)
	}
	b.waitPublished(t, append(sentinel, ids[0])...)
	for _, id := range ids[1:] {
		if published(t, b.pool, id) {
			t.Fatalf("row %s published while an earlier row of its key is not due", id)
		}
	}
}

// A row that commits late, below the claim cursor, while a backlog drains
// (Watermill's TestNotMissingMessages is the model): transaction A draws a
// low id and commits only once the relay has moved past it. The periodic
// rescan (rescan_interval) finds it while the backlog is still draining;
// without the rescan it would wait for the end of the drain.
func TestLateCommitBelowTheCursorIsPublishedDuringADrain(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *relay.Config) {
		c.Workers = 1 // no partial batch (and wake-up) before the drain ends
		c.BatchSize = 100
		c.RescanInterval = 50 * time.Millisecond
	})
	ctx := context.Background()
	late, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = late.Rollback(ctx) }()
	ids, err := outbox.Enqueue(ctx, late, outbox.Message{RoutingKey: b.queue, Payload: []byte("late")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `INSERT INTO outbox (routing_key, payload)
		SELECT $1, '\x7b7d' FROM generate_series(1, 20000)`, b.queue); err != nil {
		t.Fatal(err)
	}
	<-b.batches // the drain has begun, above the late row's id
	if err := late.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	b.waitPublished(t, ids...)
	testenv.Eventually(t, time.Minute, "the backlog to drain", func() (bool, error) {
		var pending int
		err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&pending)
		return pending == 0, err
	})
	var after int
	err = b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox
		WHERE published_at > (SELECT published_at FROM outbox WHERE message_id = $1)`, ids[0]).Scan(&after)
	if err != nil {
		t.Fatal(err)
	}
	if after == 0 {
		t.Fatal("the late row was published only after the whole backlog: the rescan did not find it")
	}
	t.Logf("the late row was published with %d backlog rows still to go", after)
}
