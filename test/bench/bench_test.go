// Package bench measures the relay on the real services, in one run, against
// the raw broker limit: a plain amqp091-go publisher with pipelined
// confirms sets the limit, and the relay's throughput is read as a ratio to
// it. `make bench` runs the short suite; `make bench-long` adds the soak.
//
// Settings (environment): BENCH_N rows per drain (default 100,000),
// BENCH_REPEAT passes per drain (default 3, the median is reported),
// BENCH_WORKERS and BENCH_BATCH (override the relay's workers and
// batch_size), BENCH_SOAK (soak duration, for example 20m; the soak is
// skipped without it), BENCH_SOAK_RATE (msg/s, default 2,000).
//
// Drains, the ordering run and the soak drive `relay run` processes (built
// without the race detector), so their CPU and memory can be read from
// /proc; the latency runs embed the relay to time each row from its
// writer's commit to the relay's commit.
package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// payload is a typical small event.
var payload = []byte(`{"order_id":123456,"customer_id":987654,"total_cents":1999,"currency":"EUR","status":"created"}`)

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

func rows() int { return envInt("BENCH_N", 100_000) }

// relayEnv is the environment of a benchmarked relay process.
func relayEnv(dsn, amqpURL string, extra ...string) []string {
	env := []string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + amqpURL, "RELAY_LOG_LEVEL=warn"}
	if n := envInt("BENCH_WORKERS", 0); n > 0 {
		env = append(env, "RELAY_WORKERS="+strconv.Itoa(n))
	}
	if n := envInt("BENCH_BATCH", 0); n > 0 {
		env = append(env, "RELAY_BATCH_SIZE="+strconv.Itoa(n))
	}
	return append(env, extra...)
}

// startRelays starts n relay processes and waits until each is ready.
func startRelays(b *testing.B, n int, env []string) []*testenv.RelayProc {
	procs := make([]*testenv.RelayProc, n)
	for i := range procs {
		procs[i] = testenv.StartRelayProc(b, env...)
	}
	for _, p := range procs {
		waitReady(b, p)
	}
	return procs
}

func waitReady(b *testing.B, p *testenv.RelayProc) {
	testenv.Eventually(b, time.Minute, "relay ready", func() (bool, error) {
		resp, err := http.Get(p.URL() + "/readyz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

// metricSum adds up an unlabelled metric over relay processes.
func metricSum(procs []*testenv.RelayProc, name string) float64 {
	var sum float64
	for _, p := range procs {
		v, _ := strconv.ParseFloat(p.Metric(name), 64)
		sum += v
	}
	return sum
}

// rawLimit publishes n persistent messages to queue with a plain amqp091-go
// publisher, confirms pipelined (up to 1,000 in flight), and returns msg/s
// and the CPU seconds the broker and the publisher (this process) spent.
//
// The messages are the relay's: the same body and properties, including a
// UUID message-id (generated before the clock starts). The message-id's
// length matters to a classic queue: with short ids ("1", "2", ...) the
// same broker takes about 40% more classic messages per second (RabbitMQ
// 3.10; quorum queues do not care), which would flatter the limit.
func rawLimit(b *testing.B, amqpURL, queue string, n int) (rate, brokerCPU, clientCPU float64) {
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	const window = 1000
	inflight := make([]*amqp.DeferredConfirmation, 0, n)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = newUUID()
	}
	settle()
	cpu0, self0 := theSlot.mqCPU(), procCPU(os.Getpid())
	start := time.Now()
	next := 0
	for i := range n {
		dc, err := ch.PublishWithDeferredConfirm("", queue, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, ContentType: "application/json", Headers: amqp.Table{},
			MessageId: ids[i], Timestamp: time.Now(), Body: payload,
		})
		if err != nil {
			b.Fatal(err)
		}
		inflight = append(inflight, dc)
		for len(inflight)-next >= window {
			if !inflight[next].Wait() {
				b.Fatal("raw publisher: nack")
			}
			next++
		}
	}
	for ; next < len(inflight); next++ {
		if !inflight[next].Wait() {
			b.Fatal("raw publisher: nack")
		}
	}
	rate = float64(n) / time.Since(start).Seconds()
	return rate, theSlot.mqCPU() - cpu0, procCPU(os.Getpid()) - self0
}

// newUUID is a random (version 4) UUID in its text form, like the
// outbox's gen_random_uuid().
func newUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func purge(b *testing.B, ch *amqp.Channel, queue string) {
	if _, err := ch.QueuePurge(queue, false); err != nil {
		b.Fatal(err)
	}
}

// bed is what one measurement runs on: a fresh migrated schema and a fresh
// queue, dropped when the benchmark ends.
type bed struct {
	amqpURL, dsn, queue string
	pool                *pgxpool.Pool
	ch                  *amqp.Channel
}

func newBed(b *testing.B, quorum bool) *bed {
	env := testenv.Services(b)
	d := &bed{amqpURL: env.AMQPURL, dsn: testenv.NewSchema(b, true)}
	d.pool = testenv.Pool(b, d.dsn)
	_, d.ch = testenv.AMQP(b, env.AMQPURL)
	d.queue = testenv.Queue(b, d.ch, quorum)
	services(b, d.pool)
	return d
}

// fill enqueues n rows for queue, 1,000 per statement, through db (a pool,
// or an open transaction to make them visible at once on commit). With
// keys > 0, row i carries ordering key i mod keys, so every key's rows
// interleave through the whole backlog (the worst shape for a claim that
// walks the backlog in id order).
func fill(b *testing.B, db outbox.Execer, queue string, keys, n int) {
	ctx := context.Background()
	msgs := make([]outbox.Message, 0, 1000)
	i := 0
	for left := n; left > 0; left -= len(msgs) {
		msgs = msgs[:0]
		for range min(1000, left) {
			m := outbox.Message{RoutingKey: queue, Payload: payload}
			if keys > 0 {
				m.OrderingKey = "key-" + strconv.Itoa(i%keys)
			}
			msgs = append(msgs, m)
			i++
		}
		if _, err := outbox.Enqueue(ctx, db, msgs...); err != nil {
			b.Fatal(err)
		}
	}
}

// dbNow reads the database clock, the one published_at is written with.
func dbNow(b *testing.B, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) time.Time {
	var t time.Time
	if err := db.QueryRow(context.Background(), `SELECT clock_timestamp()`).Scan(&t); err != nil {
		b.Fatal(err)
	}
	return t
}

// tableSize is pg_total_relation_size(outbox) and its dead tuples.
func tableSize(b *testing.B, pool *pgxpool.Pool) (bytes, deadTuples int64) {
	err := pool.QueryRow(context.Background(), `
SELECT pg_total_relation_size('outbox'::regclass),
       coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'outbox'::regclass), 0)`).Scan(&bytes, &deadTuples)
	if err != nil {
		b.Fatal(err)
	}
	return bytes, deadTuples
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat times
// (100 on every Linux platform Go supports).
const clockTicks = 100

// procCPU is the user+system CPU seconds of one process.
func procCPU(pid int) float64 { return statSeconds(pid, 11) }

// reapedCPU is the user+system CPU seconds of the children process pid
// has reaped (cutime and cstime).
func reapedCPU(pid int) float64 { return statSeconds(pid, 13) }

// statFields are the fields of /proc/<pid>/stat after the command name,
// which is in parentheses and may hold spaces: fields[0] is the state
// (field 3), fields[1] the parent, fields[11] and [12] utime and stime
// (14 and 15), fields[13] and [14] cutime and cstime. nil if pid is gone.
func statFields(pid int) []string {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return nil
	}
	s := string(data)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
}

// statSeconds is the sum of the two clock-tick fields from i, in seconds.
func statSeconds(pid, i int) float64 {
	fields := statFields(pid)
	if len(fields) < i+2 {
		return 0
	}
	a, _ := strconv.ParseFloat(fields[i], 64)
	b, _ := strconv.ParseFloat(fields[i+1], 64)
	return (a + b) / clockTicks
}

// peakRSS is the largest resident set process pid has had, in MiB
// (VmHWM), or 0 if it cannot be read.
func peakRSS(pid int) float64 {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// cpuOf sums the CPU seconds of every process whose command is comm
// (postgres, beam.smp). Processes that exit between two readings take
// their time with them, so read it around phases where the set is stable.
func cpuOf(comm string) float64 {
	entries, _ := os.ReadDir("/proc")
	var sum float64
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		c, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(c)) != comm {
			continue
		}
		sum += procCPU(pid)
	}
	return sum
}

// settle waits (up to 30 s) until the broker and the database are nearly
// idle: below a fifth of a core over a quarter second, twice in a row. A
// purge or a dropped schema leaves background work (queue index and
// message store clean-up, autovacuum) that would otherwise land in the
// next measurement.
func settle() {
	const window = 250 * time.Millisecond
	quiet := 0
	prev := theSlot.mqCPU() + theSlot.pgCPU()
	for end := time.Now().Add(30 * time.Second); quiet < 2 && time.Now().Before(end); {
		time.Sleep(window)
		now := theSlot.mqCPU() + theSlot.pgCPU()
		if (now-prev)/window.Seconds() < 0.2 {
			quiet++
		} else {
			quiet = 0
		}
		prev = now
	}
}

// rssMiB is a process's resident set size.
func rssMiB(pid int) float64 {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

func queueKinds() []string { return []string{"quorum", "classic"} }

// report prints one result line, so `make bench` output reads as a table.
func report(format string, args ...any) {
	fmt.Printf(format+"\n", args...)
}
