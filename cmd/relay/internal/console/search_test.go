package console

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// planNode is a node of EXPLAIN (FORMAT JSON)'s plan tree.
type planNode struct {
	NodeType  string     `json:"Node Type"`
	IndexName string     `json:"Index Name"`
	Plans     []planNode `json:"Plans"`
}

// walk calls f on n and every node below it.
func (n planNode) walk(f func(planNode)) {
	f(n)
	for _, c := range n.Plans {
		c.walk(f)
	}
}

// On a table of 1,000,000 published rows over 10,000 keys, the search by
// message id and by ordering key (first page and a later one) is planned
// on the indexes search.go's comment quotes, never a sequential scan, and
// a real browser finds the row through the console. The time each search
// takes is logged, not asserted (figures are for benchmarks): go test -v.
func TestSearchOnAMillionRows(t *testing.T) {
	if testing.Short() {
		t.Skip("seeds 1,000,000 rows (about 30 s)")
	}
	t.Parallel()
	ctx := context.Background()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	start := time.Now()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	// Published rows written as a relay would leave them: the insert
	// triggers (guard, key order), which are for rows applications write,
	// are skipped to seed in seconds rather than a minute.
	if _, err := tx.Exec(ctx, `SET LOCAL session_replication_role = replica`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `
INSERT INTO outbox (routing_key, payload, ordering_key, published_at, created_at)
SELECT 'q', convert_to('{"n":' || n || '}', 'UTF8'), 'key-' || (n % 10000), now(), now() - (1000000 - n) * interval '1 ms'
FROM generate_series(1, 1000000) n`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE outbox`); err != nil {
		t.Fatal(err)
	}
	var id int64
	var msgID, key string
	// The newest row of a key, so that the key's first page shows it.
	if err := pool.QueryRow(ctx, `SELECT id, message_id::text, ordering_key FROM outbox WHERE ordering_key = 'key-4242' ORDER BY id DESC LIMIT 1`).
		Scan(&id, &msgID, &key); err != nil {
		t.Fatal(err)
	}
	t.Logf("seeded 1,000,000 rows in %s", time.Since(start).Round(time.Millisecond))

	for _, c := range []struct {
		name    string
		form    searchForm
		indexes []string // each must appear in the plan
	}{
		{"message id", searchForm{MessageID: msgID}, []string{"outbox_message_id_key", "outbox_replay_message_id_idx"}},
		{"ordering key", searchForm{Key: key}, []string{"outbox_ordering_key_idx"}},
		{"ordering key, a later page", searchForm{Key: key, Before: id}, []string{"outbox_ordering_key_idx"}},
	} {
		query, args, err := buildSearch(c.form)
		if err != nil {
			t.Fatal(err)
		}
		var raw []byte
		if err := pool.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+query, args...).Scan(&raw); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var plans []struct{ Plan planNode }
		if err := json.Unmarshal(raw, &plans); err != nil || len(plans) != 1 {
			t.Fatalf("%s: EXPLAIN gave %s (%v)", c.name, raw, err)
		}
		used := map[string]bool{}
		var nodes []string
		plans[0].Plan.walk(func(n planNode) {
			nodes = append(nodes, strings.TrimSpace(n.NodeType+" "+n.IndexName))
			if n.IndexName != "" {
				used[n.IndexName] = true
			}
			if n.NodeType == "Seq Scan" {
				t.Errorf("%s: the plan scans the table: %v", c.name, nodes)
			}
		})
		for _, ix := range c.indexes {
			if !used[ix] {
				t.Errorf("%s: the plan does not use %s: %v", c.name, ix, nodes)
			}
		}
		t.Logf("plan by %s: %s", c.name, strings.Join(nodes, " -> "))
	}

	_, base := serve(t, Config{Pool: pool})
	b := browser(t)
	for _, c := range []struct{ name, query string }{
		{"message id", "message_id=" + url.QueryEscape(msgID)},
		{"ordering key", "key=" + url.QueryEscape(key)},
	} {
		var found string
		began := time.Now()
		if err := chromedp.Run(b, chromedp.Navigate(base+"/search?"+c.query), chromedp.Text("#results", &found)); err != nil {
			t.Fatal(err)
		}
		took := time.Since(began)
		if !strings.Contains(found, msgID) {
			t.Errorf("search by %s: row %d (message id %s) not among the results:\n%s", c.name, id, msgID, found)
		}
		t.Logf("search by %s over 1,000,000 rows, in Chromium (page load and render included): %s", c.name, took.Round(time.Millisecond))
	}
}
