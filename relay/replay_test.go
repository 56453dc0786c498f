package relay_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
)

// writeKeyed inserts perKey rows for each of keys into queue, one
// statement, in key-interleaved order, and returns the highest id.
func writeKeyed(t *testing.T, pool *pgxpool.Pool, queue string, keys []string, perKey int) int64 {
	t.Helper()
	var last int64
	_, err := pool.Exec(context.Background(), `
INSERT INTO outbox (routing_key, payload, ordering_key)
SELECT $1, convert_to(k || ':' || n, 'UTF8'), k
FROM generate_series(1, $3) n, unnest($2::text[]) k
ORDER BY n, k`, queue, keys, perKey)
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitPublished(t, pool, 30*time.Second)
	if err := pool.QueryRow(context.Background(), `SELECT max(id) FROM outbox`).Scan(&last); err != nil {
		t.Fatal(err)
	}
	return last
}

// A replay of a time range, running while an application keeps writing
// rows of the same keys, publishes each key in outbox order (copies and
// live rows alike), and a live row never waits behind more than the
// replay's step of copies: the replay inserts its next step only when the
// previous one is published.
func TestReplayBesideLiveDrainKeepsOrderAndBound(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()
	keys := []string{"a", "b", "c"}
	last := writeKeyed(t, b.pool, b.queue, keys, 40)
	testenv.Consume(t, b.ch, b.queue, 120, 30*time.Second) // the originals, read and gone
	var since, until time.Time
	if err := b.pool.QueryRow(ctx, `SELECT min(created_at), max(created_at) + interval '1 microsecond' FROM outbox`).Scan(&since, &until); err != nil {
		t.Fatal(err)
	}

	const step = 10
	done := make(chan error, 1)
	var res relay.ReplayResult
	go func() {
		var err error
		res, err = relay.Replay(ctx, b.pool, relay.ReplayOptions{
			Filter: relay.ReplayFilter{Since: since, Until: until}, Batch: step, Via: "test", Poll: 5 * time.Millisecond,
		})
		done <- err
	}()
	// The application writes one row per statement until the replay ends
	// (at least 30, so that the two overlap).
	live := 0
	for running := true; running || live < 30; live++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			running = false
		default:
		}
		if _, err := b.pool.Exec(ctx, `INSERT INTO outbox (routing_key, payload, ordering_key, created_at)
VALUES ($1, 'live', $2, clock_timestamp())`, b.queue, keys[live%len(keys)]); err != nil {
			t.Fatal(err)
		}
	}
	if res.Copied != 120 {
		t.Fatalf("replay copied %d rows, want 120", res.Copied)
	}
	arrivals := testenv.Consume(t, b.ch, b.queue, 120+live, 60*time.Second)

	// Per key, the arrivals' outbox ids ascend.
	type row struct {
		id  int64
		key string
	}
	byMsg := map[string]row{}
	rows, err := b.pool.Query(ctx, `SELECT message_id::text, id, ordering_key FROM outbox WHERE id > $1`, last)
	if err != nil {
		t.Fatal(err)
	}
	var m string
	var r row
	if _, err := pgx.ForEachRow(rows, []any{&m, &r.id, &r.key}, func() error { byMsg[m] = r; return nil }); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int64{}
	seq := map[string]int{}
	for _, d := range arrivals {
		r, ok := byMsg[d.MessageId]
		if !ok {
			t.Fatalf("message %s is no row written after the originals", d.MessageId)
		}
		id, k := r.id, r.key
		if id < seen[k] {
			t.Fatalf("key %s: row %d arrived after row %d", k, id, seen[k])
		}
		seen[k] = id
		// A copy's payload is its original's "key:n": the copies of a key
		// arrive in their originals' order.
		if body := string(d.Body); body != "live" {
			var n int
			if _, err := fmt.Sscanf(strings.TrimPrefix(body, k+":"), "%d", &n); err != nil || n != seq[k]+1 {
				t.Fatalf("key %s: copy %q arrived after copy %d", k, body, seq[k])
			}
			seq[k] = n
		}
	}

	// The bound: copies ahead of a live row (lower id) and still
	// unpublished when it was written. At most one step is ever pending;
	// two when a step begins while the row's statement runs.
	var worst int
	if err := b.pool.QueryRow(ctx, `
SELECT coalesce(max((SELECT count(*) FROM outbox c
                     WHERE c.replay_of IS NOT NULL AND c.id < l.id AND c.published_at > l.created_at)), 0)
FROM outbox l WHERE l.replay_of IS NULL AND l.id > $1`, last).Scan(&worst); err != nil {
		t.Fatal(err)
	}
	if worst > 2*step {
		t.Errorf("a live row waited behind %d replay copies, over the bound of %d", worst, 2*step)
	}
	t.Logf("%d live rows beside the replay; the most copies ahead of one: %d (bound %d)", live, worst, 2*step)

	// The audit row counts the copies and says the replay finished.
	list, err := relay.ListAudit(ctx, b.pool, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Action != "replay" || list[0].Rows != 120 || list[0].FinishedAt == nil || list[0].Actor == "" {
		t.Fatalf("audit: %+v, want one finished replay of 120 rows", list)
	}
}

// A same-id replay lets a consumer's inbox apply only what it missed: the
// consumer applied some messages, the rest were lost (the queue purged);
// after the replay each lost one is applied once, and the ones it had are
// recognised as duplicates.
func TestSameIDReplayAppliesOnlyMissing(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()
	last := writeKeyed(t, b.pool, b.queue, []string{"k"}, 10)
	if _, err := b.ch.QueueDelete(b.queue, false, false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ch.QueueDeclare(b.queue, true, false, false, false, map[string]any{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}
	// The consumer had applied the first four.
	if _, err := b.pool.Exec(ctx, `INSERT INTO inbox (consumer, message_id)
SELECT 'applier', message_id::text FROM outbox ORDER BY id LIMIT 4`); err != nil {
		t.Fatal(err)
	}
	var applied, dups atomic.Int64
	consumer, err := inbox.New(inbox.Config{
		Queue: b.queue, Name: "applier", DB: b.pool, AMQPURLs: []string{b.env.AMQPURL},
		Handler: func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS applied (message_id text)`)
			if err == nil {
				_, err = tx.Exec(ctx, `INSERT INTO applied VALUES ($1)`, m.ID)
			}
			return err
		},
		Concurrency: 1,
		Logger:      testLogger(),
		OnEvent: func(e inbox.Event) {
			switch e.Kind {
			case inbox.EventApplied:
				applied.Add(1)
			case inbox.EventDuplicate:
				dups.Add(1)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	testenv.RunInBackground(t, consumer.Run)

	res, err := relay.Replay(ctx, b.pool, relay.ReplayOptions{
		Filter: relay.ReplayFilter{ToID: last, OrderingKey: "k"}, SameID: true, Batch: 3, Via: "test", Poll: 5 * time.Millisecond,
	})
	if err != nil || res.Copied != 10 {
		t.Fatalf("replay: %d copied, %v; want 10", res.Copied, err)
	}
	testenv.Eventually(t, 30*time.Second, "ten messages handled", func() (bool, error) {
		return applied.Load()+dups.Load() == 10, nil
	})
	if applied.Load() != 6 || dups.Load() != 4 {
		t.Fatalf("applied %d, duplicates %d; want 6 and 4", applied.Load(), dups.Load())
	}
	var missing int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox o WHERE o.replay_of IS NULL
AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.message_id = o.message_id::text)`).Scan(&missing); err != nil || missing != 0 {
		t.Fatalf("%d originals not in the inbox (%v)", missing, err)
	}
}

// A replay refuses an empty filter: replaying the whole table is never an
// accident.
func TestReplayRefusesEmptyFilter(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	_, err := relay.Replay(context.Background(), pool, relay.ReplayOptions{})
	if !errors.Is(err, relay.ErrEmptyFilter) {
		t.Fatalf("got %v, want ErrEmptyFilter", err)
	}
}
