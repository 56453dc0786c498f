package console

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
)

// End to end from a real browser, with a relay and an inbox consumer on a
// real queue: the console's requeue brings a dead row to the consumer,
// and its replay of a time range with the same message ids, after the
// consumer lost the last messages of each key, has the consumer apply
// exactly the lost ones, per key in outbox order, and recognise the rest
// as duplicates.
func TestBrowserRequeueAndReplayReachTheConsumer(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	ctx := context.Background()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, false)
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := relay.New(pool, relay.Config{AMQPURLs: []string{env.AMQPURL}, Logger: discard, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	testenv.RunInBackground(t, r.Run)
	if _, err := pool.Exec(ctx, `CREATE TABLE applied (seq bigint GENERATED ALWAYS AS IDENTITY, message_id text, body text)`); err != nil {
		t.Fatal(err)
	}
	var dups atomic.Int64
	consumer, err := inbox.New(inbox.Config{
		Queue: queue, Name: "orders", DB: pool, AMQPURLs: []string{env.AMQPURL}, Concurrency: 1, Logger: discard,
		Handler: func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
			_, err := tx.Exec(ctx, `INSERT INTO applied (message_id, body) VALUES ($1, $2)`, m.ID, string(m.Body))
			return err
		},
		OnEvent: func(e inbox.Event) {
			if e.Kind == inbox.EventDuplicate {
				dups.Add(1)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	testenv.RunInBackground(t, consumer.Run)
	applied := func(want int) {
		t.Helper()
		testenv.Eventually(t, 60*time.Second, fmt.Sprintf("%d messages applied", want), func() (bool, error) {
			var n int
			err := pool.QueryRow(ctx, `SELECT count(*) FROM applied`).Scan(&n)
			return n == want, err
		})
	}
	const perKey, lostPerKey = 6, 3
	keys := []string{"k1", "k2"}
	if _, err := pool.Exec(ctx, `
INSERT INTO outbox (routing_key, payload, ordering_key)
SELECT $1, convert_to(k || ':' || n, 'UTF8'), k FROM generate_series(1, $3) n, unnest($2::text[]) k ORDER BY n, k`,
		queue, keys, perKey); err != nil {
		t.Fatal(err)
	}
	total := perKey * len(keys)
	applied(total)
	var since, until time.Time
	var last int64
	if err := pool.QueryRow(ctx, `SELECT min(created_at), max(created_at) + interval '1 microsecond', max(id) FROM outbox`).
		Scan(&since, &until, &last); err != nil {
		t.Fatal(err)
	}
	_, base := serve(t, Config{Pool: pool})
	b := browser(t)

	// Requeue: a dead row goes back to pending, and the consumer gets it.
	var deadID int64
	if err := pool.QueryRow(ctx, `INSERT INTO outbox (routing_key, payload, attempts, dead_at, last_error)
VALUES ($1, 'parked', 10, now(), 'unroutable: no binding then') RETURNING id`, queue).Scan(&deadID); err != nil {
		t.Fatal(err)
	}
	var notice string
	if err := chromedp.Run(b, chromedp.Navigate(fmt.Sprintf("%s/row/%d", base, deadID)), chromedp.Click("#requeue", chromedp.NodeVisible),
		chromedp.WaitVisible("#notice"), chromedp.Text("#notice", &notice)); err != nil {
		t.Fatal(err)
	}
	if notice != "requeue: 1 of 1 row(s)" {
		t.Fatalf("requeue answered %q", notice)
	}
	applied(total + 1)

	// The consumer's database loses its last lostPerKey messages of each
	// key (a restored backup); the console replays the originals' time
	// range with the same ids.
	if _, err := pool.Exec(ctx, `
WITH lost AS (SELECT message_id::text AS id FROM outbox
              WHERE id <= $2 AND split_part(convert_from(payload, 'UTF8'), ':', 2)::int > $1)
, gone AS (DELETE FROM applied WHERE message_id IN (SELECT id FROM lost))
DELETE FROM inbox WHERE consumer = 'orders' AND message_id IN (SELECT id FROM lost)`, perKey-lostPerKey, last); err != nil {
		t.Fatal(err)
	}
	var seqBefore int64
	if err := pool.QueryRow(ctx, `SELECT max(seq) FROM applied`).Scan(&seqBefore); err != nil {
		t.Fatal(err)
	}
	search := base + "/search?since=" + url.QueryEscape(since.Format(time.RFC3339Nano)) + "&until=" + url.QueryEscape(until.Format(time.RFC3339Nano))
	if err := chromedp.Run(b, chromedp.Navigate(search), chromedp.Click(`#replay button[type="submit"]`, chromedp.NodeVisible),
		chromedp.WaitVisible("#notice"), chromedp.Text("#notice", &notice)); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("replayed %d row(s), all published (audit entry ", total); !strings.HasPrefix(notice, want) {
		t.Fatalf("replay answered %q, want %q...", notice, want)
	}
	lost := lostPerKey * len(keys)
	applied(total + 1)
	testenv.Eventually(t, 60*time.Second, "every copy handled", func() (bool, error) {
		return dups.Load() == int64(total-lost), nil
	})
	// Applied after the loss: the lost ones, once each, per key in the
	// copies' outbox order.
	rows, err := pool.Query(ctx, `SELECT o.ordering_key, o.id, a.body FROM applied a
JOIN outbox o ON o.message_id::text = a.message_id AND o.replay_of IS NOT NULL WHERE a.seq > $1 ORDER BY a.seq`, seqBefore)
	if err != nil {
		t.Fatal(err)
	}
	var key, body string
	var id int64
	prev := map[string]int64{}
	var got []string
	if _, err := pgx.ForEachRow(rows, []any{&key, &id, &body}, func() error {
		got = append(got, body)
		if id < prev[key] {
			return fmt.Errorf("key %s: copy %d (%s) applied after copy %d", key, id, body, prev[key])
		}
		prev[key] = id
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != lost {
		t.Fatalf("applied after the loss: %v, want the %d lost messages", got, lost)
	}
	var entries string
	if err := chromedp.Run(b, chromedp.Navigate(base+"/audit"), chromedp.Text("main", &entries)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(entries, "replay") || !strings.Contains(entries, "requeue") {
		t.Errorf("the audit page does not show both actions:\n%s", entries)
	}
}
