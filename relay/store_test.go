package relay

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// The claim's work follows the keys and the
// batch, not the backlog. EXPLAIN ANALYZE of the real claim statement, in
// the real claim transaction, over a 50,000-row backlog; the rows every
// scan of the outbox returned (times its loops) must stay far below the
// backlog. Shapes: 20 keys interleaved through the backlog, and one rare
// key whose only row sits behind 49,999 rows of a hot key (a claim that
// looked the rare key up in id order would walk the whole backlog).
func TestClaimReadsKeysAndBatchNotBacklog(t *testing.T) {
	t.Parallel()
	const backlog, batch = 50_000, 500
	for name, fill := range map[string]string{
		"20 keys":  `SELECT 'q', '\x00', 'key-' || (g % 20) FROM generate_series(1, 50000) g`,
		"rare key": `SELECT 'q', '\x00', CASE WHEN g = 50000 THEN 'a-rare' ELSE 'hot' END FROM generate_series(1, 50000) g`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pool := testenv.Pool(t, testenv.NewSchema(t, true))
			ctx := context.Background()
			if _, err := pool.Exec(ctx, `INSERT INTO outbox (routing_key, payload, ordering_key) `+fill); err != nil {
				t.Fatal(err)
			}
			if _, err := pool.Exec(ctx, `ANALYZE outbox`); err != nil {
				t.Fatal(err)
			}
			tx, err := pool.BeginTx(ctx, claimTx)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback(ctx) }()
			var plan []struct {
				Plan planNode `json:"Plan"`
			}
			var raw []byte
			err = tx.QueryRow(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) "+claimBatch,
				batch, "", true, batch, int64(0), batch, 16<<20, int64(64<<20)).Scan(&raw)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(raw, &plan); err != nil {
				t.Fatal(err)
			}
			read, returned := plan[0].Plan.outboxRowsRead(), plan[0].Plan.ActualRows
			t.Logf("%s: the claim returned %v rows and read %v rows of the outbox (backlog %d)", name, returned, read, backlog)
			if returned < 1 {
				t.Fatalf("the claim returned %v rows", returned)
			}
			if read > 5*batch {
				t.Fatalf("the claim read %v rows for a batch of %d over a %d-row backlog: its cost follows the backlog", read, batch, backlog)
			}
		})
	}
}

// planNode is the part of EXPLAIN's JSON the test reads.
type planNode struct {
	NodeType     string     `json:"Node Type"`
	RelationName string     `json:"Relation Name"`
	ActualRows   float64    `json:"Actual Rows"`
	ActualLoops  float64    `json:"Actual Loops"`
	RowsRemoved  float64    `json:"Rows Removed by Filter"`
	HeapRecheck  float64    `json:"Rows Removed by Index Recheck"`
	Plans        []planNode `json:"Plans"`
}

// outboxRowsRead sums, over every scan of the outbox table, the rows it
// produced plus those its filter threw away, times its loops.
func (n planNode) outboxRowsRead() float64 {
	sum := 0.0
	if n.RelationName == "outbox" {
		sum += (n.ActualRows + n.RowsRemoved + n.HeapRecheck) * n.ActualLoops
	}
	for _, c := range n.Plans {
		sum += c.outboxRowsRead()
	}
	return sum
}

// A claim whose key cursor is past every key wraps to the first key, so a
// worker that just published the last key never comes back empty-handed
// (and then idle until the next wake-up) while keys wait.
func TestClaimWrapsPastTheLastKey(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (routing_key, payload, ordering_key)
		SELECT 'q', '\x00', 'key-' || (g % 3) FROM generate_series(1, 30) g`); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.BeginTx(ctx, claimTx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	rows, _, err := claim(ctx, tx, claimArgs{keyedRows: 100, afterKey: "key-9", blockOnDead: true, runMax: 100,
		batchRows: 100, maxPayload: 1 << 20, maxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 30 {
		t.Fatalf("claim after the last key took %d rows, want all 30", len(rows))
	}
}
