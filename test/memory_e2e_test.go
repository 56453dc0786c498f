package test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// Memory follows max_batch_bytes, not the
// table. Four 100 MB rows (over the default max_payload_bytes, 16 MiB)
// between good rows, and six legal rows of 16 MiB: with the default
// settings the relay never loads the big ones (they end dead with the
// reason), publishes the rest, and its peak resident set (VmHWM, read
// from /proc when the work is done) stays under 200 MB. The relay is the
// binary as shipped: the race detector's shadow memory would multiply it.
func TestMemoryIsBoundedWhateverTheTableHolds(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, false)
	ctx := context.Background()

	good := make([]outbox.Message, 10)
	for i := range good {
		good[i] = outbox.Message{RoutingKey: queue, Payload: []byte(`{}`)}
	}
	if _, err := outbox.Enqueue(ctx, pool, good...); err != nil {
		t.Fatal(err)
	}
	const huge, legal = 100 << 20, 16<<20 - 1024
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (routing_key, payload)
		SELECT $1, convert_to(repeat('x', $2), 'UTF8') FROM generate_series(1, 4)`, queue, huge); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (routing_key, payload)
		SELECT $1, convert_to(repeat('y', $2), 'UTF8') FROM generate_series(1, 6)`, queue, legal); err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Enqueue(ctx, pool, good...); err != nil {
		t.Fatal(err)
	}

	p := testenv.StartPlainRelayProc(t, "RELAY_DATABASE_URL="+dsn, "RELAY_AMQP_URL="+env.AMQPURL)
	testenv.Eventually(t, 2*time.Minute, "every row published or dead", func() (bool, error) {
		var left int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL`).Scan(&left)
		return left == 0, err
	})
	peak := peakRSS(t, p.Pid())

	rows, err := pool.Query(ctx, `SELECT octet_length(payload), published_at IS NOT NULL, coalesce(last_error, '') FROM outbox`)
	if err != nil {
		t.Fatal(err)
	}
	var published, dead int
	for rows.Next() {
		var size int
		var pub bool
		var lastErr string
		if err := rows.Scan(&size, &pub, &lastErr); err != nil {
			t.Fatal(err)
		}
		switch {
		case size == huge && !pub && strings.Contains(lastErr, "over max_payload_bytes"):
			dead++
		case size < huge && pub:
			published++
		default:
			t.Errorf("row of %d bytes: published %v, last_error %q", size, pub, lastErr)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d rows published, %d dead; relay peak RSS %.0f MiB", published, dead, peak)
	if published != 26 || dead != 4 {
		t.Fatalf("%d published, %d dead; want 26 and 4", published, dead)
	}
	if peak >= 200 {
		t.Fatalf("relay peak RSS %.0f MiB, want under 200 MiB", peak)
	}
}

// peakRSS is a process's peak resident set size (VmHWM), in MiB.
func peakRSS(t *testing.T, pid int) float64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb / 1024
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}
