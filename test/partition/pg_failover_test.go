//go:build partition

package partition

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/backoff"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// The PostgreSQL failover scenario: two relays drain a keyed backlog
// through the pair's multi-host URL; mid-drain the primary crashes
// (immediate stop) and the standby is promoted. With synchronous
// replication every commit the writers saw succeed must be published, in
// per-key order, with no row charged an attempt or parked dead, and both
// relays must LISTEN on the new primary. With asynchronous replication the
// commits the standby had not received are lost by the database itself:
// the test counts them (and the messages published for rows that then
// vanished) instead of failing on them.

const (
	pgKeys       = 200
	pgPerKey     = 100 // 20,000 rows
	pgWriters    = 4
	pgPerTx      = 50
	pgFaultAfter = 5000 // distinct messages consumed before the primary dies
	pgTrickleTx  = 100  // trickle commits acknowledged after the promotion
)

// pgRelaySettings keep detection and recovery quick (as in the fault suite).
var pgRelaySettings = []string{
	"RELAY_BATCH_SIZE=200", "RELAY_WORKERS=2", "RELAY_HEARTBEAT=2s", "RELAY_CONFIRM_TIMEOUT=5s",
	"RELAY_RECONNECT_MIN=50ms", "RELAY_RECONNECT_MAX=1s", "RELAY_POLL_INTERVAL=200ms",
	"RELAY_SHUTDOWN_TIMEOUT=5s", "RELAY_MAX_ATTEMPTS=1000", "RELAY_RETRY_BASE=50ms", "RELAY_RETRY_MAX=500ms",
}

func TestPGFailoverSync(t *testing.T)  { pgFailover(t, "sync") }
func TestPGFailoverAsync(t *testing.T) { pgFailover(t, "async") }

func pgFailover(t *testing.T, mode string) {
	env := testenv.Services(t)
	pair := testenv.StartPGPair(t, mode)
	dsn := pair.NewSchema()
	pool := testenv.Pool(t, dsn)
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, true)
	cons := pgConsume(t, ch, queue)

	settings := append([]string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + env.AMQPURL}, pgRelaySettings...)
	relays := []*testenv.RelayProc{testenv.StartRelayProc(t, settings...), testenv.StartRelayProc(t, settings...)}
	for _, r := range relays {
		pgAwaitMetric(t, r, "outboxrelay_relay_listener_connected", "1")
	}

	w := &pgWriter{t: t, pool: pool, queue: queue, acked: map[string]bool{}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// The backlog, from several writers at once, and a trickle beside it.
	bulk := pgShuffledKeys(pgKeys, pgPerKey)
	var bulkWG sync.WaitGroup
	chunks := make(chan []string)
	go func() {
		defer close(chunks)
		for i := 0; i < len(bulk); i += pgPerTx {
			chunks <- bulk[i:min(i+pgPerTx, len(bulk))]
		}
	}()
	for range pgWriters {
		bulkWG.Add(1)
		go func() {
			defer bulkWG.Done()
			for c := range chunks {
				w.write(ctx, c)
			}
		}()
	}
	promoted := make(chan struct{})
	trickleDone := make(chan struct{})
	go func() {
		defer close(trickleDone)
		w.trickle(ctx, promoted)
	}()

	// Mid-drain: the primary crashes, the standby is promoted.
	testenv.Eventually(t, 3*time.Minute, fmt.Sprintf("%d messages consumed before the fault", pgFaultAfter),
		func() (bool, error) { return cons.distinct() >= pgFaultAfter, nil })
	atFault := cons.distinct()
	faultAt := time.Now()
	pair.StopPrimary("immediate")
	pair.Promote()
	promotedAt := time.Now()
	close(promoted)
	t.Logf("%s: primary stopped (immediate) with %d distinct messages consumed; standby promoted %.1fs later",
		mode, atFault, promotedAt.Sub(faultAt).Seconds())

	bulkWG.Wait()
	<-trickleDone
	if t.Failed() {
		return
	}

	// Every row the new primary holds is published and arrives.
	testenv.WaitPublished(t, pool, 3*time.Minute)
	outboxIDs := pgOutboxIDs(t, pool)
	testenv.Eventually(t, 2*time.Minute, "every row of the new primary consumed", func() (bool, error) {
		return cons.hasAll(outboxIDs), nil
	})

	first, deliveries, arrivedAt := cons.snapshot()
	lostAcked := 0
	for id := range w.ackedSet() {
		if !outboxIDs[id] {
			lostAcked++
		}
	}
	vanished := 0 // published, then gone with the old primary
	for _, id := range first {
		if !outboxIDs[id] {
			vanished++
		}
	}
	violations, keys := testenv.OrderViolations(t, pool, first)
	var charged, dead int
	if err := pool.QueryRow(context.Background(),
		`SELECT count(*) FILTER (WHERE attempts > 0), count(*) FILTER (WHERE dead_at IS NOT NULL) FROM outbox`).
		Scan(&charged, &dead); err != nil {
		t.Fatal(err)
	}
	stall, recovery := pgStall(arrivedAt, faultAt)

	acked, unsure, retries := w.counts()
	t.Logf("%s: rows in the new primary %d, acknowledged to writers %d (+%d committed whose acknowledgement was lost), writer retries %d",
		mode, len(outboxIDs), acked, unsure, retries)
	t.Logf("%s: acknowledged rows lost %d, published rows that vanished %d, duplicates %d, per-key order violations %d (%d keys), charged %d, dead %d",
		mode, lostAcked, vanished, deliveries-len(first), violations, keys, charged, dead)
	t.Logf("%s: longest stall in publishing %.1fs; first message after the crash %.1fs after it", mode, stall.Seconds(), recovery.Seconds())

	if mode == "sync" && lostAcked > 0 {
		t.Errorf("synchronous replication: %d rows acknowledged to their writer are missing from the new primary", lostAcked)
	}
	if violations > 0 {
		t.Errorf("%d per-key order violations", violations)
	}
	if charged > 0 || dead > 0 {
		t.Errorf("the failover was charged to rows: %d with attempts > 0, %d dead", charged, dead)
	}

	// The relays followed: each LISTENs on the new primary again and is ready.
	np := testenv.Pool(t, pair.StandbyURL)
	su, err := url.Parse(pair.StandbyURL)
	if err != nil {
		t.Fatal(err)
	}
	newPrimary := su.Host
	testenv.Eventually(t, time.Minute, "both relays LISTEN on the new primary", func() (bool, error) {
		var n int
		err := np.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND query LIKE 'LISTEN %'`).Scan(&n)
		return n == len(relays), err
	})
	for i, r := range relays {
		pgAwaitMetric(t, r, "outboxrelay_relay_listener_connected", "1")
		testenv.Eventually(t, time.Minute, fmt.Sprintf("relay %d ready", i), func() (bool, error) {
			resp, err := http.Get(r.URL() + "/readyz")
			if err != nil {
				return false, err
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK, nil
		})
		logs := r.Logs()
		follows := `"msg":"listening for inserts"` // then the channel, then the server
		if !strings.Contains(logs, "notification listener lost") || !strings.Contains(logs, `"server":"`+newPrimary+`"`) ||
			!strings.Contains(logs, follows) {
			t.Errorf("relay %d: the log does not show the LISTEN connection lost and re-established on %s:\n%s", i, newPrimary, pgTail(logs, 40))
		}
		if n := strings.Count(logs, "SQLSTATE 25006"); n > 0 {
			t.Logf("relay %d: %d batches refused by a read-only server", i, n)
		}
	}
}

// pgWriter commits outbox rows through the multi-host URL, retrying a
// transaction through the failover with the same message ids: a retry of a
// commit that did land fails on the unique key and counts as committed,
// though never acknowledged.
type pgWriter struct {
	t       *testing.T
	pool    *pgxpool.Pool
	queue   string
	mu      sync.Mutex
	acked   map[string]bool
	unsure  int
	retries int
}

func (w *pgWriter) write(ctx context.Context, keys []string) bool {
	msgs := make([]outbox.Message, len(keys))
	for i, k := range keys {
		msgs[i] = outbox.Message{MessageID: uuid.NewString(), RoutingKey: w.queue, OrderingKey: k, Payload: []byte(k)}
	}
	bo := backoff.Policy{Base: 20 * time.Millisecond, Max: 500 * time.Millisecond}
	for attempt := 0; ; attempt++ {
		_, err := outbox.Enqueue(ctx, w.pool, msgs...)
		var pgErr *pgconn.PgError
		w.mu.Lock()
		switch {
		case err == nil:
			for _, m := range msgs {
				w.acked[m.MessageID] = true
			}
		case errors.As(err, &pgErr) && pgErr.Code == "23505":
			w.unsure += len(msgs)
		default:
			w.retries++
		}
		w.mu.Unlock()
		if err == nil || (pgErr != nil && pgErr.Code == "23505") {
			return true
		}
		if ctx.Err() != nil {
			w.t.Errorf("writer gave up: %v", err)
			return false
		}
		// The database is failing over: retry the same rows.
		backoff.Sleep(ctx.Done(), bo.Full(attempt))
	}
}

// trickle commits one row at a time, keys in turn, until pgTrickleTx
// commits have been acknowledged after promoted is closed.
func (w *pgWriter) trickle(ctx context.Context, promoted <-chan struct{}) {
	after := 0
	tick := time.NewTicker(20 * time.Millisecond) // a load shape, not a synchronisation
	defer tick.Stop()
	for i := 0; after < pgTrickleTx; i++ {
		select {
		case <-ctx.Done():
			w.t.Errorf("trickle: %v", ctx.Err())
			return
		case <-tick.C:
		}
		isAfter := false
		select {
		case <-promoted:
			isAfter = true
		default:
		}
		if !w.write(ctx, []string{fmt.Sprintf("key-%03d", i%pgKeys)}) {
			return
		}
		if isAfter {
			after++
		}
	}
}

func (w *pgWriter) ackedSet() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked
}

func (w *pgWriter) counts() (acked, unsure, retries int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked), w.unsure, w.retries
}

func pgShuffledKeys(keys, perKey int) []string {
	work := make([]string, 0, keys*perKey)
	for k := range keys {
		for range perKey {
			work = append(work, fmt.Sprintf("key-%03d", k))
		}
	}
	rand.Shuffle(len(work), func(i, j int) { work[i], work[j] = work[j], work[i] })
	return work
}

// pgConsumer records every delivery of a queue (auto-ack) with its time.
type pgConsumer struct {
	mu     sync.Mutex
	seen   map[string]bool
	first  []string    // message ids in order of first arrival
	at     []time.Time // when each of first arrived
	copies int         // every delivery, duplicates included
}

func pgConsume(t *testing.T, ch *amqp.Channel, queue string) *pgConsumer {
	t.Helper()
	if err := ch.Qos(2000, 0, false); err != nil {
		t.Fatal(err)
	}
	tag := testenv.Name("c")
	deliveries, err := ch.Consume(queue, tag, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &pgConsumer{seen: map[string]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range deliveries {
			now := time.Now()
			c.mu.Lock()
			c.copies++
			if !c.seen[d.MessageId] {
				c.seen[d.MessageId] = true
				c.first = append(c.first, d.MessageId)
				c.at = append(c.at, now)
			}
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ch.Cancel(tag, false)
		<-done
	})
	return c
}

func (c *pgConsumer) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.first)
}

func (c *pgConsumer) hasAll(ids map[string]bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range ids {
		if !c.seen[id] {
			return false
		}
	}
	return true
}

func (c *pgConsumer) snapshot() (first []string, deliveries int, at []time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.first...), c.copies, append([]time.Time(nil), c.at...)
}

// pgStall returns the longest gap between consecutive first arrivals, and
// how long after fault the first message after it arrived.
func pgStall(at []time.Time, fault time.Time) (stall, recovery time.Duration) {
	recovery = -1
	for i := 1; i < len(at); i++ {
		stall = max(stall, at[i].Sub(at[i-1]))
		if recovery < 0 && at[i].After(fault) {
			recovery = at[i].Sub(fault)
		}
	}
	return stall, recovery
}

func pgOutboxIDs(t *testing.T, pool *pgxpool.Pool) map[string]bool {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT message_id::text FROM outbox`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	ids := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

func pgAwaitMetric(t *testing.T, r *testenv.RelayProc, name, want string) {
	t.Helper()
	testenv.Eventually(t, time.Minute, name+" = "+want, func() (bool, error) {
		return r.Metric(name) == want, nil
	})
}

func pgTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
