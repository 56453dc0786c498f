package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// After a consumer lost what it applied last (a restored backup), `relay
// replay --message-ids same` of the originals' time range, run by the
// binary beside a running relay while the application keeps writing rows
// of the same keys, brings back exactly what was lost: through a real
// queue, the inbox consumer applies each lost message once and recognises
// the others as duplicates; per key, what it applies arrives in outbox
// order (copies, then the live rows written behind them); a live row
// never waits behind more than two replay batches of copies; and the
// audit log records the replay with its filter and count.
func TestReplayCLIBesideALiveDrain(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	ctx := context.Background()
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, false)
	db := "RELAY_DATABASE_URL=" + dsn
	startRelay(t, db, "RELAY_AMQP_URL="+env.AMQPURL, "RELAY_POLL_INTERVAL=50ms")
	if _, err := pool.Exec(ctx, `CREATE TABLE applied (seq bigint GENERATED ALWAYS AS IDENTITY, message_id text, body text)`); err != nil {
		t.Fatal(err)
	}
	var dups atomic.Int64
	consumer, err := inbox.New(inbox.Config{
		Queue: queue, Name: "orders", DB: pool, AMQPURLs: []string{env.AMQPURL}, Concurrency: 1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
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
	runConsumer(t, consumer)
	applied := func(want int) {
		t.Helper()
		testenv.Eventually(t, 60*time.Second, fmt.Sprintf("%d messages applied", want), func() (bool, error) {
			var n int
			err := pool.QueryRow(ctx, `SELECT count(*) FROM applied`).Scan(&n)
			return n == want, err
		})
	}

	keys := []string{"customer-1", "customer-2", "customer-3"}
	const perKey, lostPerKey = 20, 8
	if _, err := pool.Exec(ctx, `
INSERT INTO outbox (routing_key, payload, ordering_key)
SELECT $1, convert_to(k || ':' || n, 'UTF8'), k FROM generate_series(1, $3) n, unnest($2::text[]) k ORDER BY n, k`,
		queue, keys, perKey); err != nil {
		t.Fatal(err)
	}
	applied(len(keys) * perKey)
	// The consumer's database is restored from a backup taken before the
	// last lostPerKey messages of each key: their effects and inbox rows
	// are gone.
	if _, err := pool.Exec(ctx, `
WITH lost AS (SELECT message_id::text AS id FROM outbox
              WHERE split_part(convert_from(payload, 'UTF8'), ':', 2)::int > $1)
, gone AS (DELETE FROM applied WHERE message_id IN (SELECT id FROM lost))
DELETE FROM inbox WHERE consumer = 'orders' AND message_id IN (SELECT id FROM lost)`, perKey-lostPerKey); err != nil {
		t.Fatal(err)
	}
	var since, until time.Time
	var last int64
	if err := pool.QueryRow(ctx, `SELECT min(created_at), max(created_at) + interval '1 microsecond', max(id) FROM outbox`).
		Scan(&since, &until, &last); err != nil {
		t.Fatal(err)
	}
	var seqBefore int64
	if err := pool.QueryRow(ctx, `SELECT coalesce(max(seq), 0) FROM applied`).Scan(&seqBefore); err != nil {
		t.Fatal(err)
	}

	const batch = 5
	cmdCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	replay := exec.CommandContext(cmdCtx, testenv.RelayBinary(t), "replay", "--message-ids", "same",
		"--since", since.Format(time.RFC3339Nano), "--until", until.Format(time.RFC3339Nano), "--batch", fmt.Sprint(batch))
	replay.Env = append(testenv.CleanEnv(), db)
	var out strings.Builder
	replay.Stdout, replay.Stderr = &out, &out
	if err := replay.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- replay.Wait() }()
	// The application writes one row per statement, round the keys, until
	// the replay has ended and at least 15 rows were written.
	live := 0
	for running := true; running || live < 15; live++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("relay replay: %v\n%s", err, out.String())
			}
			running = false
		default:
		}
		if _, err := pool.Exec(ctx, `INSERT INTO outbox (routing_key, payload, ordering_key, created_at)
VALUES ($1, convert_to('live:' || $3::int, 'UTF8'), $2, clock_timestamp())`, queue, keys[live%len(keys)], live); err != nil {
			t.Fatal(err)
		}
	}
	total := len(keys) * perKey
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if want := fmt.Sprintf("replayed %d row(s), all published (audit entry ", total); !strings.HasPrefix(lines[len(lines)-1], want) {
		t.Fatalf("relay replay printed:\n%s\nwant a last line starting %q", out.String(), want)
	}
	applied(total + live)
	if got, want := dups.Load(), int64(total-len(keys)*lostPerKey); got != want {
		t.Errorf("duplicates recognised: %d, want %d (the messages the consumer still had)", got, want)
	}

	// Each original applied once, the lost ones again after the restore.
	var distinct, rows int
	if err := pool.QueryRow(ctx, `SELECT count(DISTINCT message_id), count(*) FROM applied WHERE body NOT LIKE 'live:%'`).
		Scan(&distinct, &rows); err != nil || distinct != total || rows != total {
		t.Fatalf("originals applied: %d distinct of %d rows (%v); want %d and %d", distinct, rows, err, total, total)
	}

	// Per key, what was applied after the restore is in outbox order: a
	// lost message's copy (its new id) and the live rows, by id.
	rs, err := pool.Query(ctx, `
SELECT o.ordering_key, o.id, a.body FROM applied a
JOIN outbox o ON o.message_id::text = a.message_id AND o.id > $2
WHERE a.seq > $1 ORDER BY a.seq`, seqBefore, last)
	if err != nil {
		t.Fatal(err)
	}
	var key, body string
	var id int64
	prev := map[string]int64{}
	n := 0
	if _, err := pgx.ForEachRow(rs, []any{&key, &id, &body}, func() error {
		n++
		if id < prev[key] {
			return fmt.Errorf("key %s: row %d (%s) applied after row %d", key, id, body, prev[key])
		}
		prev[key] = id
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := len(keys)*lostPerKey + live; n != want {
		t.Fatalf("%d messages applied after the restore, want %d", n, want)
	}

	// The bound: copies ahead of a live row (lower id) still unpublished
	// when it was written.
	var worst int
	if err := pool.QueryRow(ctx, `
SELECT coalesce(max((SELECT count(*) FROM outbox c
                     WHERE c.replay_of IS NOT NULL AND c.id < l.id AND c.published_at > l.created_at)), 0)
FROM outbox l WHERE l.replay_of IS NULL AND l.id > $1`, last).Scan(&worst); err != nil {
		t.Fatal(err)
	}
	if worst > 2*batch {
		t.Errorf("a live row waited behind %d replay copies, over the bound of %d", worst, 2*batch)
	}
	t.Logf("%d live rows beside the replay; the most copies ahead of one: %d (bound %d)", live, worst, 2*batch)

	auditOut, code := relayCmd(t, []string{db}, "audit", "--json")
	var audit []struct {
		Action, Via string
		Rows        int64
		Filter      struct {
			Filter map[string]any
			SameID bool `json:"same_id"`
		}
		FinishedAt *time.Time `json:"finished_at"`
	}
	if err := json.Unmarshal([]byte(auditOut), &audit); code != 0 || err != nil || len(audit) != 1 {
		t.Fatalf("relay audit --json: exit %d, %v:\n%s", code, err, auditOut)
	}
	if a := audit[0]; a.Action != "replay" || a.Via != "cli" || a.Rows != int64(total) || a.FinishedAt == nil ||
		!a.Filter.SameID || a.Filter.Filter["since"] == nil || a.Filter.Filter["until"] == nil {
		t.Errorf("audit entry %+v, want a finished cli same-id replay of %d rows with since and until", a, total)
	}
}
