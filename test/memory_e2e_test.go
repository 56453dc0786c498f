package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

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
	m := setupMemory(t, 10)
	env, dsn, pool, queue, good := m.env, m.dsn, m.pool, m.queue, m.good
	ctx := context.Background()
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

// memoryBundle is what a memory test needs: a migrated schema, a queue,
// and good rows to put around the bad ones.
type memoryBundle struct {
	env   testenv.Env
	dsn   string
	pool  *pgxpool.Pool
	ch    *amqp.Channel
	queue string
	good  []outbox.Message
}

func setupMemory(t *testing.T, goodRows int) memoryBundle {
	t.Helper()
	m := memoryBundle{env: testenv.Services(t), dsn: testenv.NewSchema(t, true)}
	m.pool = testenv.Pool(t, m.dsn)
	_, m.ch = testenv.AMQP(t, m.env.AMQPURL)
	m.queue = testenv.Queue(t, m.ch, false)
	m.good = make([]outbox.Message, goodRows)
	for i := range m.good {
		m.good[i] = outbox.Message{RoutingKey: m.queue, Payload: []byte(`{}`)}
	}
	return m
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

// worstHeaders are header documents at the edge of what the row limits
// accept (jsonb text at most 262,144 bytes, header table at most 129,724
// AMQP bytes, at most 8,192 entries per table or array), each shaped to
// cost the relay the most memory for the bytes it is counted as:
//   - control characters, which jsonb returns as 6-byte \u0001 escapes:
//     the most text for the AMQP bytes;
//   - empty tables and empty arrays, 4 bytes of text and 5 AMQP bytes
//     each, every one a map or a slice once decoded, and one-entry
//     tables, 13 bytes of text and a map of about 350 bytes each;
//   - nulls and zeros in arrays, the most entries for the text, and
//     members (three-byte names), the most map entries for it.
func worstHeaders() map[string]string {
	const width = 8192
	arrays := func(elem string, n int) string {
		var b strings.Builder
		b.WriteString("{")
		for a := 0; n > 0; a++ {
			k := min(n, width)
			n -= k
			if a > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, `"%c": [`, 'a'+a)
			b.WriteString(strings.Repeat(elem+", ", k-1) + elem + "]")
		}
		b.WriteString("}")
		return b.String()
	}
	return map[string]string{
		// 7 + 6n + 2 bytes of text; 4 + 2 + 5 + n AMQP bytes.
		"control characters": `{"h": "` + strings.Repeat(`\u0001`, (262144-9)/6) + `"}`,
		// 4 + 4*7 + 5n AMQP bytes (four arrays).
		"empty tables": arrays("{}", (129724-32)/5),
		"empty arrays": arrays("[]", (129724-32)/5),
		// 8 AMQP bytes each: 'F', a length, a one-byte name, a null.
		"one-entry tables": arrays(`{"a": null}`, (129724-32)/8),
		// 13 bytes of text each (`"abc": null, `).
		"members": members(262144/13 - 10),
		// 6 bytes of text each ("null, "): the text limit binds.
		"nulls": arrays("null", 262144/6-20),
		// 9 AMQP bytes each: the header table budget binds.
		"zeros": arrays("0", (129724-4-2*7)/9),
	}
}

// members is a header document of n null members with three-character
// names, in tables of at most 8,192.
func members(n int) string {
	const al = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	var b strings.Builder
	b.WriteString("{")
	for t := 0; n > 0; t++ {
		k := min(n, 8192)
		n -= k
		if t > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, `"%c": {`, 'a'+t)
		for i := range k {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, `"%c%c%c": null`, al[i%62], al[i/62%62], al[i/3844])
		}
		b.WriteString("}")
	}
	b.WriteString("}")
	return b.String()
}

// Memory follows max_batch_bytes whatever the headers hold: 500 rows of
// the worst headers the row limits accept, between good rows, claimed by
// the binary as shipped with the default settings (but confirm_timeout,
// see below). Every row is published once, and the relay's peak resident
// set (VmHWM) stays under 200 MB: a batch is cut by what its headers cost
// once decoded, not by their stored or text size.
func TestMemoryIsBoundedWhateverTheHeadersHold(t *testing.T) {
	t.Parallel()
	m := setupMemory(t, 50)
	env, dsn, pool, ch, queue, good := m.env, m.dsn, m.pool, m.ch, m.queue, m.good
	ctx := context.Background()
	if _, err := outbox.Enqueue(ctx, pool, good...); err != nil {
		t.Fatal(err)
	}
	shapes := worstHeaders()
	names := make([]string, 0, len(shapes))
	for name := range shapes {
		names = append(names, name)
	}
	slices.Sort(names)
	const rows = 500
	start := time.Now()
	// The row-limit checks cost the database about 0.1 s of CPU for each
	// of these rows: the shapes go in side by side, each followed by good
	// rows, so their ids interleave.
	errs := make(chan error, len(names))
	for i, name := range names {
		n := rows / len(names)
		if i < rows%len(names) {
			n++
		}
		go func() {
			if _, err := pool.Exec(ctx, `INSERT INTO outbox (routing_key, payload, headers)
				SELECT $1, 'x', $2::jsonb FROM generate_series(1, $3)`, queue, shapes[name], n); err != nil {
				errs <- fmt.Errorf("insert %d rows of %s: %w", n, name, err)
				return
			}
			_, err := outbox.Enqueue(ctx, pool, good...)
			errs <- err
		}()
	}
	for range names {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}

	inserted := time.Now()
	t.Logf("rows inserted in %s", inserted.Sub(start).Round(time.Second))
	// The default settings but one: RabbitMQ may take more than the 5 s
	// confirm_timeout to confirm a few 130 KB header tables of 16,000
	// entries while every other test loads the machine, and the relay
	// then leaves the node and publishes them again (at least once, as
	// it should). What is counted here is memory, and every message once.
	p := testenv.StartPlainRelayProc(t, "RELAY_DATABASE_URL="+dsn, "RELAY_AMQP_URL="+env.AMQPURL,
		"RELAY_CONFIRM_TIMEOUT=2m")
	testenv.Eventually(t, 5*time.Minute, "every row published", func() (bool, error) {
		var left int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&left)
		return left == 0, err
	})
	peak := peakRSS(t, p.Pid())
	var dead int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL`).Scan(&dead); err != nil || dead != 0 {
		t.Errorf("%d rows dead (%v), want every row published", dead, err)
	}
	q, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := rows + len(good)*(len(names)+1)
	t.Logf("%d messages in the queue, published in %s; relay peak RSS %.0f MiB", q.Messages, time.Since(inserted).Round(time.Second), peak)
	if q.Messages != want {
		t.Errorf("queue holds %d messages, want %d; relay logs:\n%s", q.Messages, want, p.Logs())
	}
	if peak >= 200 {
		t.Fatalf("relay peak RSS %.0f MiB, want under 200 MiB", peak)
	}
}
