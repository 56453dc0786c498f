//go:build fault

package fault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

var (
	summaryMu sync.Mutex
	summary   []string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if len(summary) > 0 {
		fmt.Printf("\n%-28s %7s %9s %10s %5s %7s %8s\n", "scenario", "rows", "delivered", "duplicates", "lost", "faults", "seconds")
		for _, s := range summary {
			fmt.Println(s)
		}
	}
	os.Exit(code)
}

// drain describes one scenario run.
type drain struct {
	rows    int      // rows the writer commits during the run
	rate    int      // rows per second
	relays  int      // relay processes
	amqpURL string   // the relays' RELAY_AMQP_URL (may be a list)
	consume string   // URL for declaring and consuming the queue
	extra   []string // more RELAY_* settings
}

// harness is one running scenario.
type harness struct {
	t      *testing.T
	pool   *pgxpool.Pool
	queue  string
	relays []*testenv.RelayProc
}

// relaySettings keep fault detection and recovery quick.
var relaySettings = []string{
	"RELAY_BATCH_SIZE=200", "RELAY_WORKERS=2", "RELAY_HEARTBEAT=2s", "RELAY_CONFIRM_TIMEOUT=5s",
	"RELAY_RECONNECT_MIN=50ms", "RELAY_RECONNECT_MAX=1s", "RELAY_POLL_INTERVAL=200ms",
	"RELAY_SHUTDOWN_TIMEOUT=5s", "RELAY_MAX_ATTEMPTS=1000", "RELAY_RETRY_BASE=50ms", "RELAY_RETRY_MAX=500ms",
}

// run starts the relays, writes d.rows rows at d.rate while fault runs,
// waits until every committed row is published, consumes the queue and
// reports. fault returns the number of faults it injected; it must leave
// the services up when it returns.
func run(t *testing.T, name string, d drain, fault func(ctx context.Context, h *harness) int) {
	env := testenv.Services(t)
	if d.consume == "" {
		d.consume = env.AMQPURL
	}
	if d.amqpURL == "" {
		d.amqpURL = env.AMQPURL
	}
	dsn := testenv.NewSchema(t, true)
	h := &harness{t: t, pool: testenv.Pool(t, dsn)}
	_, ch := testenv.AMQP(t, strings.Split(d.consume, ",")[0])
	h.queue = testenv.Queue(t, ch, true)
	settings := append(append([]string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + d.amqpURL}, relaySettings...), d.extra...)
	for range d.relays {
		h.relays = append(h.relays, testenv.StartRelayProc(t, settings...))
	}

	start := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	faults := make(chan int, 1)
	go func() { faults <- fault(ctx, h) }()
	h.write(d.rows, d.rate)
	cancel()
	nFaults := <-faults

	h.waitPublished(3 * time.Minute)
	elapsed := time.Since(start)

	committed := map[string]bool{}
	rows, err := h.pool.Query(context.Background(), `SELECT message_id::text FROM outbox`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		committed[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}

	seen, deliveries := consumeAll(t, d.consume, h.queue, committed)
	lost := 0
	for id := range committed {
		if seen[id] == 0 {
			lost++
		}
	}
	dups := deliveries - len(seen)
	line := fmt.Sprintf("%-28s %7d %9d %10d %5d %7d %8.1f", name, len(committed), len(seen), dups, lost, nFaults, elapsed.Seconds())
	summaryMu.Lock()
	summary = append(summary, line)
	summaryMu.Unlock()
	t.Log(line)
	if lost > 0 {
		t.Errorf("%s: %d of %d committed rows never arrived", name, lost, len(committed))
	}
	// Duplicates come only from batches in flight when a fault hit: at most
	// every worker's batch on every relay, per fault.
	if bound := (nFaults + 1) * d.relays * 2 * 200; dups > bound {
		t.Errorf("%s: %d duplicates, more than the %d that could have been in flight", name, dups, bound)
	}
}

// write commits n rows at rate rows/s in transactions of 50, retrying a
// transaction whose outcome is unknown: it reuses its message ids, so a
// retry of a commit that did land fails on the unique key and counts as
// done.
func (h *harness) write(n, rate int) {
	const perTx = 50
	tick := time.NewTicker(time.Second * perTx / time.Duration(rate))
	defer tick.Stop()
	msgs := make([]outbox.Message, perTx)
	for written := 0; written < n; written += perTx {
		<-tick.C
		for i := range msgs {
			msgs[i] = outbox.Message{MessageID: uuid.NewString(), RoutingKey: h.queue,
				Payload: []byte(fmt.Sprintf(`{"n":%d}`, written+i))}
		}
		deadline := time.Now().Add(2 * time.Minute)
		for {
			_, err := outbox.Enqueue(context.Background(), h.pool, msgs...)
			var pgErr *pgconn.PgError
			if err == nil || (errors.As(err, &pgErr) && pgErr.Code == "23505") {
				break
			}
			if time.Now().After(deadline) {
				h.t.Fatalf("writer: %v", err)
			}
			time.Sleep(50 * time.Millisecond) // the database is restarting: retry the same rows
		}
	}
}

// consumeAll reads the queue until every committed id has arrived and the
// queue is empty, or nothing arrives for 15s; it returns deliveries per id
// and the total.
func consumeAll(t *testing.T, amqpURL, queue string, committed map[string]bool) (map[string]int, int) {
	t.Helper()
	urls := strings.Split(amqpURL, ",")
	var conn *amqp.Connection
	var err error
	for _, u := range urls {
		if conn, err = amqp.Dial(u); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Qos(2000, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	total := 0
	idle := time.NewTimer(15 * time.Second)
	defer idle.Stop()
	for {
		select {
		case dl, ok := <-deliveries:
			if !ok {
				t.Fatal("consumer closed")
			}
			seen[dl.MessageId]++
			total++
			if len(seen) >= len(committed) {
				// Everything arrived; drain what is left (duplicates).
				q, err := ch.QueueDeclarePassive(queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
				if err == nil && q.Messages == 0 && len(deliveries) == 0 {
					return seen, total
				}
			}
			if !idle.Stop() {
				<-idle.C
			}
			idle.Reset(15 * time.Second)
		case <-idle.C:
			return seen, total
		}
	}
}

// waitPublished waits until no row is pending; when time runs out it reports
// what is left (the rows and each relay's log) before failing.
func (h *harness) waitPublished(within time.Duration) {
	h.t.Helper()
	ctx := context.Background()
	end := time.Now().Add(within)
	for {
		var left int
		err := h.pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&left)
		if err == nil && left == 0 {
			return
		}
		if time.Now().After(end) {
			h.reportPending()
			h.t.Fatalf("timed out after %s waiting for every row published: %d left (last error: %v)", within, left, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (h *harness) reportPending() {
	rows, err := h.pool.Query(context.Background(), `SELECT id, coalesce(ordering_key, ''), attempts, suspected,
		coalesce(last_error, ''), available_at - now(), dead_at IS NOT NULL FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 20`)
	if err != nil {
		h.t.Logf("pending rows: %v", err)
	} else {
		for rows.Next() {
			var id int64
			var key, lastErr string
			var attempts int
			var suspected, dead bool
			var due time.Duration
			if err := rows.Scan(&id, &key, &attempts, &suspected, &lastErr, &due, &dead); err != nil {
				h.t.Logf("pending rows: %v", err)
				break
			}
			h.t.Logf("pending: id %d key %q attempts %d suspected %v dead %v due in %s last_error %q", id, key, attempts, suspected, dead, due, lastErr)
		}
		rows.Close()
	}
	for i, r := range h.relays {
		logs := strings.Split(r.Logs(), "\n")
		h.t.Logf("relay %d log (last 60 lines):\n%s", i, strings.Join(logs[max(0, len(logs)-60):], "\n"))
	}
}
