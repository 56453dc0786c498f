//go:build partition

package partition

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

const (
	backlogRows = 20_000
	keys        = 200
	trickleRate = 100 // rows per second while the fault lasts
	// maxStall is the longest a relay may stop publishing while a majority
	// of the cluster is reachable.
	maxStall = 15 * time.Second
)

var (
	summaryMu sync.Mutex
	summary   []string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if len(summary) > 0 {
		fmt.Printf("\n%-34s %-14s %6s %4s %6s %6s %5s %7s %7s %4s %6s %9s %9s %6s\n", "scenario", "handling", "rows", "lost",
			"dupRow", "copies", "order", "stall_s", "charged", "dead", "stalls", "abandoned", "overtaken", "secs")
		for _, s := range summary {
			fmt.Println(s)
		}
	}
	os.Exit(code)
}

// scenario is one partition run. Nodes are numbered 1..3.
type scenario struct {
	handling string // cluster_partition_handling: ignore or pause_minority
	relays   int    // the relays' node: first in their RELAY_AMQP_URL
	leader   int    // the queue is declared through this node, which leads it
	consume  int    // a node that stays in the majority: first in the consumer's list
	strict   bool   // RELAY_STRICT_ORDERING=true
	// relayURL, if set, replaces the relays' node's URL (a proxy to it).
	relayURL func(t *testing.T, nodeURL string) string
	// fault injects the fault and returns when it is over, the network
	// healed (the cluster may still be settling). It says what it did.
	fault func(ctx context.Context, h *harness) string
}

// harness is one running scenario.
type harness struct {
	t      *testing.T
	urls   []string // the nodes' AMQP URLs, node N at N-1
	pool   *pgxpool.Pool
	queue  string
	relays []*testenv.RelayProc
}

// netnsUp starts (or reuses) the namespaced cluster with that partition
// handling and returns its nodes' AMQP URLs.
func netnsUp(t *testing.T, handling string) []string {
	t.Helper()
	testenv.Services(t) // PostgreSQL and the slot
	out := testenv.ServicesCmd(t, "netns-up", handling)
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "RELAY_TEST_NETNS_AMQP_URLS="); ok {
			return strings.Split(strings.Trim(v, `'"`), ",")
		}
	}
	t.Fatalf("netns-up printed no URLs:\n%s", out)
	return nil
}

// order lists the URLs with node first, the others after it in node order.
func order(urls []string, first int) []string {
	out := []string{urls[first-1]}
	for i, u := range urls {
		if i != first-1 {
			out = append(out, u)
		}
	}
	return out
}

func keyedMessage(queue string, n int) outbox.Message {
	return outbox.Message{MessageID: uuid.NewString(), RoutingKey: queue, OrderingKey: fmt.Sprintf("key-%03d", n%keys),
		Payload: []byte(fmt.Sprintf(`{"n":%d}`, n))}
}

// run drives one scenario: backlog, relays, fault with a trickle of inserts,
// drain, settle, consume, check.
func run(t *testing.T, name string, sc scenario) {
	urls := netnsUp(t, sc.handling)
	h := &harness{t: t, urls: urls}
	dsn := testenv.NewSchema(t, true)
	h.pool = testenv.Pool(t, dsn)
	h.queue = declareQuorumQueue(t, urls[sc.leader-1], order(urls, sc.consume))
	if got := strings.TrimSpace(testenv.ServicesCmd(t, "netns-leader", h.queue)); got != fmt.Sprint(sc.leader) {
		t.Fatalf("queue %s is led by node %s, not by node %d through which it was declared", h.queue, got, sc.leader)
	}

	ctx := context.Background()
	for i := 0; i < backlogRows; i += 1000 {
		msgs := make([]outbox.Message, 0, 1000)
		for n := i; n < i+1000; n++ {
			msgs = append(msgs, keyedMessage(h.queue, n))
		}
		if _, err := outbox.Enqueue(ctx, h.pool, msgs...); err != nil {
			t.Fatal(err)
		}
	}

	relayURLs := order(urls, sc.relays)
	if sc.relayURL != nil {
		relayURLs[0] = sc.relayURL(t, relayURLs[0])
	}
	settings := []string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + strings.Join(relayURLs, ",")}
	if sc.strict {
		settings = append(settings, "RELAY_STRICT_ORDERING=true")
	}
	for range 2 {
		h.relays = append(h.relays, testenv.StartRelayProc(t, settings...))
	}
	start := time.Now()
	// The fault starts mid-drain.
	testenv.Eventually(t, 2*time.Minute, "the relays to publish 2,000 rows", func() (bool, error) {
		var n int
		err := h.pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NOT NULL`).Scan(&n)
		return n >= 2000, err
	})

	faultCtx, cancel := context.WithCancel(ctx)
	what := make(chan string, 1)
	go func() {
		defer cancel()
		what <- sc.fault(faultCtx, h)
	}()
	trickled := testenv.WriteRows(faultCtx, t, h.pool, 1<<30, trickleRate, func(i int) outbox.Message {
		return keyedMessage(h.queue, backlogRows+i)
	})
	did := <-what
	t.Logf("%s: %s; %d rows trickled in during the fault", name, did, trickled)

	testenv.WaitPublished(t, h.pool, 5*time.Minute, h.relays...)
	elapsed := time.Since(start)
	rows := testenv.CommittedRows(t, h.pool)
	var stalls, abandoned, overtaken float64
	for _, r := range h.relays {
		v, _ := r.MetricSum("outboxrelay_relay_broker_stalls_total")
		stalls += v
		v, _ = r.MetricSum("outboxrelay_relay_broker_abandoned_total")
		abandoned += v
		v, _ = r.MetricSum("outboxrelay_relay_ordering_overtaken_total")
		overtaken += v
	}

	// Under ignore a healed partition stays in RabbitMQ's view until the
	// losing side restarts: settle before reading the queue.
	healStart := time.Now()
	_, healLog := testenv.ServicesCmdLog(t, "netns-heal", "--wait")
	t.Logf("%s: cluster settled %.1fs after the relays finished:\n%s", name, time.Since(healStart).Seconds(), strings.TrimSpace(healLog))
	committed := make(map[string]bool, len(rows))
	for _, r := range rows {
		committed[r.MessageID] = true
	}
	arrivals := testenv.ConsumeAll(t, order(urls, sc.consume), h.queue, committed)
	v := testenv.Check(testenv.History{Rows: rows, Arrivals: arrivals})

	line := fmt.Sprintf("%-34s %-14s %6d %4d %6d %6d %5d %7.1f %7d %4d %6.0f %9.0f %9.0f %6.0f", name, sc.handling, v.Committed, v.Lost,
		v.Duplicated, v.ExtraCopies, v.OrderViolations, v.LongestStall.Seconds(), v.Charged, v.Dead, stalls, abandoned, overtaken, elapsed.Seconds())
	summaryMu.Lock()
	summary = append(summary, line)
	summaryMu.Unlock()
	t.Logf("%s: %s (stall ended %s after the start)", name, v, v.StallEnd.Sub(start).Round(100*time.Millisecond))

	if v.Lost > 0 {
		t.Errorf("%d of %d committed rows never arrived", v.Lost, v.Committed)
	}
	if v.Charged > 0 {
		t.Errorf("%d rows were charged an attempt for the broker's unavailability; want 0", v.Charged)
	}
	if v.Dead > 0 {
		t.Errorf("%d rows were parked dead; want 0", v.Dead)
	}
	if v.LongestStall > maxStall {
		t.Errorf("publishing stalled for %.1fs while a majority was reachable; want at most %s", v.LongestStall.Seconds(), maxStall)
	}
	for _, n := range v.ViolationNotes {
		t.Logf("%s: order violation: %s", name, n)
	}
	// Strict ordering rules a violation out. Pipelined, the copies a left
	// node still holds can land after the relay moved on (see
	// docs/partitions.md, "Per-key order under flapping partitions"):
	// the count is printed and documented, not failed.
	if v.OrderViolations > 0 && sc.strict {
		t.Errorf("%d per-key order violations in strict ordering mode; want 0", v.OrderViolations)
	} else if v.OrderViolations > 0 {
		t.Logf("%s: %d per-key order violations in default (pipelined) ordering mode, %.0f overtakes counted by the relays", name, v.OrderViolations, overtaken)
	}
	if v.Unknown > 0 {
		t.Errorf("%d deliveries of messages no committed row has", v.Unknown)
	}
}

// declareQuorumQueue declares a quorum queue with three replicas through
// declareURL (its node becomes the leader) and deletes it at the end through
// the first of cleanupURLs that answers.
func declareQuorumQueue(t *testing.T, declareURL string, cleanupURLs []string) string {
	t.Helper()
	_, ch := testenv.AMQP(t, declareURL)
	name := testenv.Name("q")
	if _, err := ch.QueueDeclare(name, true, false, false, false,
		amqp.Table{"x-queue-type": "quorum", "x-quorum-initial-group-size": 3}); err != nil {
		t.Fatalf("declare queue: %v", err)
	}
	t.Cleanup(func() {
		for _, u := range cleanupURLs {
			conn, err := amqp.Dial(u)
			if err != nil {
				continue
			}
			defer conn.Close()
			if c, err := conn.Channel(); err == nil {
				if _, err := c.QueueDelete(name, false, false, false); err == nil {
					return
				}
			}
		}
	})
	return name
}

// hold waits d unless ctx ends first; it reports whether d passed.
func hold(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
