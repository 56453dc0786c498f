package bench

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BenchmarkInsertPath measures what one outbox row costs to write by each
// plain-SQL path, per row, with BENCH_INSERT_N rows (5,000) per path sent
// as pipelined statements (pgx.Batch) in one transaction, so that the
// figure is the server's work rather than round trips: a plain INSERT
// with convert_to (the baseline), outbox_enqueue with a text payload
// (which also checks the JSON), and a plain INSERT with the opt-in
// outbox_payload_check trigger enabled. Payloads are JSON of 200 bytes
// and of 64 KiB (the check parses all of it: the worst case is the
// largest row).
func BenchmarkInsertPath(b *testing.B) {
	n := envInt("BENCH_INSERT_N", 5_000)
	for range b.N {
		d := newBed(b, false)
		ctx := context.Background()
		for _, size := range []int{200, 64 << 10} {
			payload := jsonOf(size)
			rows := n
			if size > 1<<10 {
				rows = max(n/10, 100)
			}
			run := func(sql string) time.Duration {
				b.Helper()
				tx, err := d.pool.Begin(ctx)
				if err != nil {
					b.Fatal(err)
				}
				defer func() { _ = tx.Rollback(ctx) }()
				var batch pgx.Batch
				for i := 0; i < rows; i++ {
					batch.Queue(sql, d.queue, payload)
				}
				start := time.Now()
				if err := tx.SendBatch(ctx, &batch).Close(); err != nil {
					b.Fatal(err)
				}
				return time.Since(start) / time.Duration(rows)
			}
			const plain = `INSERT INTO outbox (routing_key, payload) VALUES ($1, convert_to($2::text, 'UTF8'))`
			const enqueue = `SELECT outbox_enqueue('', $1::text, $2::text)`
			run(plain) // warm the plans and the cache
			base := run(plain)
			fn := run(enqueue)
			if _, err := d.pool.Exec(ctx, `ALTER TABLE outbox ENABLE TRIGGER outbox_payload_check`); err != nil {
				b.Fatal(err)
			}
			checked := run(plain)
			both := run(enqueue)
			if _, err := d.pool.Exec(ctx, `ALTER TABLE outbox DISABLE TRIGGER outbox_payload_check`); err != nil {
				b.Fatal(err)
			}
			report("insert   %6s JSON, %5d rows: plain INSERT %7.1f µs/row | outbox_enqueue %7.1f µs/row (+%.1f) | plain INSERT, check on %7.1f µs/row (+%.1f) | outbox_enqueue, check on %7.1f µs/row",
				byteSize(size), rows, us(base), us(fn), us(fn-base), us(checked), us(checked-base), us(both))
			b.ReportMetric(us(base), fmt.Sprintf("plain_%s_µs/row", byteSize(size)))
			b.ReportMetric(us(fn), fmt.Sprintf("enqueue_%s_µs/row", byteSize(size)))
			b.ReportMetric(us(checked), fmt.Sprintf("checked_%s_µs/row", byteSize(size)))
		}
		b.ReportMetric(0, "ns/op")
	}
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func byteSize(n int) string {
	if n >= 1<<10 {
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// jsonOf returns a JSON object of about size bytes, with escapes and
// non-ASCII text for the parser to walk.
func jsonOf(size int) string {
	var sb strings.Builder
	sb.WriteString(`{"order_id":42,"items":[`)
	for i := 0; sb.Len() < size-40; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"sku":"A-%d","path":"C:\\t","name":"café ✓"}`, i)
	}
	sb.WriteString(`]}`)
	return sb.String()
}
