//go:build fault

package fault

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

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
	// What was committed is judged against a ledger: the second relay (and
	// every other one) runs with retention: none, deleting what it
	// publishes, so that both modes go through every fault side by side.
	testenv.Ledger(t, h.pool)
	settings := append(append([]string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + d.amqpURL}, relaySettings...), d.extra...)
	for i := range d.relays {
		s := settings
		if i%2 == 1 {
			s = append(slices.Clone(settings), "RELAY_RETENTION=none")
		}
		h.relays = append(h.relays, testenv.StartRelayProc(t, s...))
	}

	start := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	faults := make(chan int, 1)
	go func() { faults <- fault(ctx, h) }()
	testenv.WriteRows(context.Background(), t, h.pool, d.rows, d.rate, func(i int) outbox.Message {
		return outbox.Message{MessageID: uuid.NewString(), RoutingKey: h.queue, Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))}
	})
	cancel()
	nFaults := <-faults

	testenv.WaitPublished(t, h.pool, 3*time.Minute, h.relays...)
	elapsed := time.Since(start)

	committed := map[string]bool{}
	rows, err := h.pool.Query(context.Background(), `SELECT message_id::text FROM `+testenv.LedgerTable)
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

	arrivals := testenv.ConsumeAll(t, strings.Split(d.consume, ","), h.queue, committed)
	seen := map[string]int{}
	for _, a := range arrivals {
		seen[a.MessageID]++
	}
	deliveries := len(arrivals)
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
	var kept int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox`).Scan(&kept); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d of %d rows deleted at publish (retention: none), %d kept", name, len(committed)-kept, len(committed), kept)
	if d.relays > 1 && kept == len(committed) {
		t.Errorf("%s: no row was deleted at publish: the retention: none relay published nothing", name)
	}
	// Duplicates come only from batches in flight when a fault hit: at most
	// every worker's batch on every relay, per fault.
	if bound := (nFaults + 1) * d.relays * 2 * 200; dups > bound {
		t.Errorf("%s: %d duplicates, more than the %d that could have been in flight", name, dups, bound)
	}
}
