package migrations_test

import (
	"context"
	"testing"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/migrations"
)

// Marking a row published writes its new version on the page of the old
// one: inserts leave the room (migration 00010), so the mark dirties one
// page and its WAL record holds only what changed.
func TestMarkStaysOnItsPage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := testenv.NewSchema(t, false)
	if _, err := migrations.Up(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	pool := testenv.Pool(t, dsn)
	// 2,000 rows of 256 bytes fill dozens of pages; the relay's mark.
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (routing_key, payload)
SELECT 'q', convert_to(repeat('x', 256), 'UTF8') FROM generate_series(1, 2000)`); err != nil {
		t.Fatal(err)
	}
	page := `SELECT id, (ctid::text::point)[0]::bigint FROM outbox ORDER BY id`
	before := map[int64]int64{}
	rows, err := pool.Query(ctx, page)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, p int64
		if err := rows.Scan(&id, &p); err != nil {
			t.Fatal(err)
		}
		before[id] = p
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE outbox SET published_at = statement_timestamp() WHERE id = ANY($1)`, keys(before)); err != nil {
		t.Fatal(err)
	}
	moved := 0
	rows, err = pool.Query(ctx, page)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, p int64
		if err := rows.Scan(&id, &p); err != nil {
			t.Fatal(err)
		}
		if before[id] != p {
			moved++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if moved != 0 {
		t.Errorf("%d of %d marked rows moved to another page; want none", moved, len(before))
	}
}

func keys(m map[int64]int64) []int64 {
	out := make([]int64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
