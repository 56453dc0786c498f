package relay_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
	"github.com/outboxrelay/outboxrelay/relay"
)

// poisonRows are rows the table accepted before the row-limit constraints
// existed (or accepts when an operator dropped them), each one AMQP, the
// broker or amqp091-go readers cannot carry. want is a word the dead row's
// last_error must hold: the field and the limit, not a connection error.
var poisonRows = []struct {
	name, column, value, want string
}{
	{"200 KB header", "headers", `jsonb_build_object('big', repeat('v', 200000))`, "header table"},
	{"300-byte exchange", "exchange", `'x' || repeat('e', 300)`, "exchange"},
	{"300-byte routing key", "routing_key", `repeat('r', 300)`, "routing_key"},
	{"300-byte content type", "content_type", `repeat('c', 300)`, "content_type"},
	{"9,000-element array", "headers", `jsonb_build_object('arr', (SELECT jsonb_agg(g) FROM generate_series(1, 9000) g))`, "8,192"},
	// 33 tables below the header table: amqp091-go's reader refuses it.
	{"33-deep header", "headers", `'` + strings.Repeat(`{"a":`, 34) + `1` + strings.Repeat(`}`, 34) + `'`, "deep"},
}

// One row of each poison shape, in a table
// without the row-limit constraints, between good rows: the relay parks it
// dead at once with a last_error naming the field and the limit, publishes
// every good row, and never loses its broker connection over it.
func TestPoisonRowIsParkedAndGoodRowsFlow(t *testing.T) {
	t.Parallel()
	for _, p := range poisonRows {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			reg := prometheus.NewRegistry()
			proxy := brokerProxy(t)
			b := setup(t, func(c *relay.Config) {
				c.AMQPURLs = []string{proxy.url}
				c.Registerer = reg
				c.BatchSize = 50
			})
			dropRowLimits(t, b.pool)
			poison, good := insertAround(t, b.pool, b.queue, p.column, p.value)
			b.waitPublished(t, good...)
			// The worker holding the poison row's batch may commit after
			// the other worker published the last good row.
			var lastErr string
			testenv.Eventually(t, 30*time.Second, "the poison row to be parked dead", func() (bool, error) {
				var dead bool
				dead, lastErr = deadState(t, b.pool, poison)
				return dead, nil
			})
			if !strings.Contains(lastErr, p.want) {
				t.Errorf("last_error %q does not name %q", lastErr, p.want)
			}
			if n := counter(t, reg, "outboxrelay_relay_broker_reconnects_total"); n != 0 {
				t.Errorf("%v broker reconnects over one poison row, want 0", n)
			}
			if n := proxy.Accepted(); n != 1 {
				t.Errorf("the relay opened %d connections to the broker, want 1", n)
			}
		})
	}
}

// Guards the second line of defence against a poison row. With the row
// checks off, a row AMQP cannot carry goes on the wire and the connection
// dies under the batch: the broker closes it (FRAME_ERROR) for a 200 KB
// header, amqp091-go for a short string over 255 bytes. The batch's
// unconfirmed rows are suspected, then published alone; the poison row,
// alone, kills the connection again and is charged each time, so it ends
// dead after max_attempts, every good row goes through without being
// charged an attempt, and the relay loses one connection for the batch
// and one per attempt charged.
func TestSuspectRowIsIsolatedAndCharged(t *testing.T) {
	t.Parallel()
	for _, p := range poisonRows[:4] { // the four shapes that kill a connection
		// amqp091-go refuses to encode a routing key or content type over
		// 255 bytes when the row is published: that row is then known, and
		// parked dead at once. The 200 KB header reaches the broker, and
		// the exchange's passive declare closes the connection before any
		// publish: those rows are found by suspicion, and charged.
		wantReason, wantAttempts := "connection_lost", 3
		if p.column == "routing_key" || p.column == "content_type" {
			wantReason, wantAttempts = "unencodable", 1
		}
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			const maxAttempts = 3
			reg := prometheus.NewRegistry()
			proxy := brokerProxy(t)
			b := setup(t, func(c *relay.Config) {
				c.AMQPURLs = []string{proxy.url}
				c.Registerer = reg
				c.BatchSize = 50
				c.MaxAttempts = maxAttempts
				c.RetryBase, c.RetryMax = time.Millisecond, 10*time.Millisecond
				c.ReconnectMin, c.ReconnectMax = time.Millisecond, 50*time.Millisecond
				relay.SkipRowChecks(c)
			})
			dropRowLimits(t, b.pool)
			poison, good := insertAround(t, b.pool, b.queue, p.column, p.value)
			b.waitPublished(t, good...)
			testenv.Eventually(t, time.Minute, "the poison row to die", func() (bool, error) {
				dead, _ := deadState(t, b.pool, poison)
				return dead, nil
			})
			ctx := context.Background()
			_, lastErr := deadState(t, b.pool, poison)
			if !strings.Contains(lastErr, wantReason) {
				t.Errorf("last_error %q, want %s", lastErr, wantReason)
			}
			var attempts, charged int
			if err := b.pool.QueryRow(ctx, `SELECT attempts FROM outbox WHERE message_id = $1`, poison).Scan(&attempts); err != nil {
				t.Fatal(err)
			}
			if attempts != wantAttempts {
				t.Errorf("poison row charged %d attempts, want %d", attempts, wantAttempts)
			}
			if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE attempts > 0 AND message_id <> $1`, poison).Scan(&charged); err != nil {
				t.Fatal(err)
			}
			if charged != 0 {
				t.Errorf("%d good rows were charged an attempt", charged)
			}
			if n := counter(t, reg, "outboxrelay_relay_suspected_total"); n < 1 && wantAttempts > 1 {
				t.Errorf("suspected_total = %v, want at least the poison row", n)
			}
			// The connections lost: the batch the poison row first went out
			// in, then one per attempt it was charged alone (none for a row
			// the client refuses to encode: it is parked at once). The
			// broker kills the connection as soon as it reads a frame over
			// frame_max, often while the client is still writing the rest:
			// the client's write then fails (reset, or the connection
			// already closed) and that write is what tells the row was on
			// the wire; a relay that missed it lost more connections than
			// this (one run in 25 to 80) and charged fewer.
			wantLost := 1.0
			if wantReason == "connection_lost" {
				wantLost += maxAttempts
			}
			lost := counter(t, reg, "outboxrelay_relay_broker_reconnects_total")
			if lost != wantLost {
				t.Errorf("%v connections lost, want %v", lost, wantLost)
			}
			dials := counter(t, reg, "outboxrelay_relay_broker_dial_failures_total")
			if n := float64(proxy.Accepted()); n > 1+lost+dials {
				t.Errorf("the relay opened %v connections to the broker: more than the first, %v after losses and %v failed dials", n, lost, dials)
			}
		})
	}
}

// proxiedBroker is the test broker behind a TCP proxy that counts the
// connections the relay opens.
type proxiedBroker struct {
	*testenv.Proxy
	url string
}

func brokerProxy(t *testing.T) proxiedBroker {
	t.Helper()
	u, err := url.Parse(testenv.Services(t).AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	p := testenv.NewProxy(t, u.Host, true)
	u.Host = p.Addr()
	return proxiedBroker{p, u.String()}
}

// dropRowLimits removes the row-limit CHECK constraints (migration 3), as
// on a table written to before them.
func dropRowLimits(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	rows, err := pool.Query(ctx, `SELECT conname FROM pg_constraint
		WHERE conrelid = 'outbox'::regclass AND contype = 'c' AND conname <> 'outbox_headers_object'`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 {
		t.Fatal("no row-limit constraints to drop")
	}
	for _, n := range names {
		if _, err := pool.Exec(ctx, `ALTER TABLE outbox DROP CONSTRAINT `+pgx.Identifier{n}.Sanitize()); err != nil {
			t.Fatal(err)
		}
	}
}

// insertAround writes 100 good rows, then a row for queue whose column is
// the SQL expression value, then 100 good rows, each group in its own
// statement, and returns the poison row's message id and the good ones.
func insertAround(t *testing.T, pool *pgxpool.Pool, queue, column, value string) (poison string, good []string) {
	t.Helper()
	ctx := context.Background()
	msgs := make([]outbox.Message, 100)
	for i := range msgs {
		msgs[i] = outbox.Message{RoutingKey: queue, Payload: []byte(`{}`)}
	}
	ids, err := outbox.Enqueue(ctx, pool, msgs...)
	if err != nil {
		t.Fatal(err)
	}
	good = append(good, ids...)
	cols := map[string]string{"routing_key": "'" + queue + "'", "payload": `'\x7b7d'`}
	cols[column] = value
	var names, values []string
	for c, v := range cols {
		names, values = append(names, c), append(values, v)
	}
	q := `INSERT INTO outbox (` + strings.Join(names, ", ") + `) VALUES (` + strings.Join(values, ", ") + `) RETURNING message_id::text`
	if err := pool.QueryRow(ctx, q).Scan(&poison); err != nil {
		t.Fatal(err)
	}
	ids, err = outbox.Enqueue(ctx, pool, msgs...)
	if err != nil {
		t.Fatal(err)
	}
	return poison, append(good, ids...)
}

func deadState(t *testing.T, pool *pgxpool.Pool, messageID string) (dead bool, lastErr string) {
	t.Helper()
	err := pool.QueryRow(context.Background(),
		`SELECT dead_at IS NOT NULL, coalesce(last_error, '') FROM outbox WHERE message_id = $1`, messageID).Scan(&dead, &lastErr)
	if err != nil {
		t.Fatal(err)
	}
	return dead, lastErr
}

// A dead row that still breaks a row limit cannot be requeued (the table
// refuses it); Requeue requeues the other dead rows and names the refused
// one with its constraint, instead of failing them all.
func TestRequeueLeavesRowsThatBreakALimit(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	ctx := context.Background()
	var good, bad int64
	if err := pool.QueryRow(ctx, `INSERT INTO outbox (routing_key, payload, dead_at) VALUES ('q', '\x00', now()) RETURNING id`).Scan(&good); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `INSERT INTO outbox (routing_key, payload, exchange, dead_at)
		VALUES ('q', '\x00', repeat('e', 300), now()) RETURNING id`).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	done, err := relay.Requeue(ctx, pool, nil)
	var refused *relay.RefusedError
	if !errors.As(err, &refused) || len(refused.IDs) != 1 || refused.IDs[0] != bad || refused.Constraints[bad] != "outbox_exchange_len" {
		t.Fatalf("Requeue error = %v, want the row %d refused by outbox_exchange_len", err, bad)
	}
	if len(done) != 1 || done[0] != good {
		t.Fatalf("requeued %v, want [%d]", done, good)
	}
}

// A broker that takes a batch and never confirms it makes no progress:
// after confirm_timeout the row is released uncharged (attempts and
// last_error untouched), the stall is counted, and with a single URL the
// relay stays (there is no other node to go to). Once the broker answers
// again the row is published, still uncharged.
func TestConfirmTimeoutChargesNoRow(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	proxy := brokerProxy(t)
	b := setup(t, func(c *relay.Config) {
		c.AMQPURLs = []string{proxy.url}
		c.Registerer = reg
		c.Workers = 1 // the worker whose channel is open takes the row
		c.ConfirmTimeout = 200 * time.Millisecond
		c.Heartbeat = time.Hour // the silence must end in a confirm timeout, not a lost connection
		c.PollInterval = 20 * time.Millisecond
	})
	ctx := context.Background()
	first, err := outbox.Enqueue(ctx, b.pool, outbox.Message{RoutingKey: b.queue, Payload: []byte("confirmed")})
	if err != nil {
		t.Fatal(err)
	}
	b.waitPublished(t, first...) // the worker's channel is open
	proxy.Hold(true)
	ids, err := outbox.Enqueue(ctx, b.pool, outbox.Message{RoutingKey: b.queue, Payload: []byte("unconfirmed")})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "a confirm_timeout stall", func() (bool, error) {
		return labelledCounter(t, reg, "outboxrelay_relay_broker_stalls_total", "reason", "confirm_timeout") >= 1, nil
	})
	assertUncharged(t, b, ids[0])
	if n := counter(t, reg, "outboxrelay_relay_broker_abandoned_total"); n != 0 {
		t.Fatalf("broker_abandoned_total = %v with a single URL, want 0", n)
	}
	proxy.Hold(false)
	proxy.Cut() // what was swallowed left the connection out of step: start afresh
	b.waitPublished(t, ids...)
	assertUncharged(t, b, ids[0])
}

// assertUncharged fails unless the row with message id id has no attempt
// and no error recorded.
func assertUncharged(t *testing.T, b *testBundle, id string) {
	t.Helper()
	var attempts int
	var lastErr *string
	if err := b.pool.QueryRow(context.Background(), `SELECT attempts, last_error FROM outbox WHERE message_id = $1`, id).Scan(&attempts, &lastErr); err != nil {
		t.Fatal(err)
	}
	if attempts != 0 || lastErr != nil {
		t.Fatalf("row %s: attempts %d, last_error %v; want it uncharged", id, attempts, lastErr)
	}
}

// A node that keeps the connection but confirms nothing (cut off from its
// cluster's majority) is left for the next URL once confirm_timeout
// passes, the row is published there uncharged, and the relay does not go
// back to the node it left while the other one answers: when the second
// node's connection is cut, it reconnects to the second node again.
func TestLeavesANodeThatMakesNoProgress(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	silent, good := brokerProxy(t), brokerProxy(t)
	b := setup(t, func(c *relay.Config) {
		c.AMQPURLs = []string{silent.url, good.url}
		c.Registerer = reg
		c.ConfirmTimeout = 200 * time.Millisecond
		c.Heartbeat = time.Hour // the node stays "alive": only its progress tells
		c.PollInterval = 20 * time.Millisecond
		c.ReconnectMin, c.ReconnectMax = time.Millisecond, 10*time.Millisecond
	})
	ctx := context.Background()
	first, err := outbox.Enqueue(ctx, b.pool, outbox.Message{RoutingKey: b.queue, Payload: []byte("first")})
	if err != nil {
		t.Fatal(err)
	}
	b.waitPublished(t, first...)
	if silent.Accepted() != 1 || good.Accepted() != 0 {
		t.Fatalf("connections: first node %d, second %d; want the relay on the first", silent.Accepted(), good.Accepted())
	}
	silent.Hold(true)
	ids, err := outbox.Enqueue(ctx, b.pool, outbox.Message{RoutingKey: b.queue, Payload: []byte("moved")})
	if err != nil {
		t.Fatal(err)
	}
	b.waitPublished(t, ids...)
	assertUncharged(t, b, ids[0])
	if n := counter(t, reg, "outboxrelay_relay_broker_abandoned_total"); n < 1 {
		t.Fatalf("broker_abandoned_total = %v, want at least 1", n)
	}
	if good.Accepted() != 1 {
		t.Fatalf("second node accepted %d connections, want 1", good.Accepted())
	}

	before := silent.Accepted()
	good.Cut()
	more, err := outbox.Enqueue(ctx, b.pool, outbox.Message{RoutingKey: b.queue, Payload: []byte("after the cut")})
	if err != nil {
		t.Fatal(err)
	}
	b.waitPublished(t, more...)
	if got := silent.Accepted(); got != before {
		t.Fatalf("the relay went back to the node it left (%d connections, was %d) while the other answered", got, before)
	}
	if good.Accepted() != 2 {
		t.Fatalf("second node accepted %d connections, want 2 (reconnected there)", good.Accepted())
	}
}

// A dead row shows in the metrics: dead_total, the
// failures by reason, and the dead_rows gauge.
func TestDeadRowShowsInMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	b := setup(t, func(c *relay.Config) {
		c.Registerer = reg
		c.MaxAttempts = 2
		c.RetryBase, c.RetryMax = time.Millisecond, time.Millisecond
		c.PollInterval = 10 * time.Millisecond
		c.StatsInterval = 20 * time.Millisecond
	})
	ctx := context.Background()
	if _, err := outbox.Enqueue(ctx, b.pool, outbox.Message{Exchange: "amq.direct", RoutingKey: testenv.Name("unbound"), Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the dead row in the metrics", func() (bool, error) {
		return counter(t, reg, "outboxrelay_relay_dead_total") == 1 &&
			gauge(t, reg, "outboxrelay_relay_dead_rows") == 1, nil
	})
	if n := labelledCounter(t, reg, "outboxrelay_relay_publish_failures_total", "reason", "unroutable"); n != 2 {
		t.Fatalf("publish_failures_total{reason=unroutable} = %v, want 2 (max_attempts)", n)
	}
}

// labelledCounter reads the counter of name whose label has value.
func labelledCounter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no metric %s{%s=%q}", name, label, value)
	return 0
}

// gauge reads an unlabelled gauge from reg (counter reads either kind).
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return counter(t, reg, name)
}
