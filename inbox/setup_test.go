package inbox_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// waitLimit bounds every wait; it is a deadlock guard, not a measurement.
const waitLimit = 30 * time.Second

// testDelays keep the retry path fast; they are real broker TTLs.
var testDelays = []time.Duration{20 * time.Millisecond, 40 * time.Millisecond}

type testBundle struct {
	env      testenv.Env
	pool     *pgxpool.Pool
	ch       *amqp.Channel // the test's own channel, in confirm mode
	queue    string
	exchange string
	reg      *prometheus.Registry
	events   *recorder
	consumer *inbox.Consumer
}

type setupOpts struct {
	exchange bool                // declare and bind an exchange (routing key "order.*")
	proxy    *testenv.Proxy      // consume through this proxy
	cfg      func(*inbox.Config) // adjust the consumer's configuration
	noStart  bool                // build the consumer but do not run it
}

// setup gives a migrated schema with a business table "applied", the
// queue topology, and a running consumer whose events are recorded.
func setup(t *testing.T, h inbox.Handler, o setupOpts) *testBundle {
	t.Helper()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	b := &testBundle{env: env, pool: testenv.Pool(t, dsn), reg: prometheus.NewRegistry(), events: newRecorder()}
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, `CREATE TABLE applied (message_id text NOT NULL, body text NOT NULL, attempt int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	_, b.ch = testenv.AMQP(t, env.AMQPURL)
	if err := b.ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	b.queue = testenv.Name("inbox")
	topo := inbox.Topology{Queue: b.queue, RetryDelays: testDelays}
	if o.exchange {
		b.exchange = testenv.Name("x")
		topo.Exchange, topo.BindingKeys = b.exchange, []string{"order.*"}
	}
	if err := inbox.DeclareTopology(ctx, b.ch, topo); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteTopology(env.AMQPURL, topo) })

	if h == nil {
		h = applyHandler
	}
	amqpURL := env.AMQPURL
	if o.proxy != nil {
		amqpURL = testenv.WithHost(t, env.AMQPURL, o.proxy.Addr())
	}
	cfg := inbox.Config{
		Queue:        b.queue,
		Name:         "test-consumer",
		DB:           b.pool,
		AMQPURLs:     []string{amqpURL},
		Handler:      h,
		RetryDelays:  testDelays,
		ReconnectMin: 10 * time.Millisecond,
		ReconnectMax: 200 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registerer:   b.reg,
		OnEvent:      b.events.add,
	}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	c, err := inbox.New(cfg)
	if err != nil {
		t.Fatalf("inbox.New: %v", err)
	}
	b.consumer = c
	if !o.noStart {
		run(t, c)
	}
	return b
}

// run runs c until the test ends.
func run(t *testing.T, c *inbox.Consumer) {
	t.Helper()
	testenv.RunInBackground(t, c.Run)
}

// applyHandler is the business logic: one row per applied message.
func applyHandler(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
	_, err := tx.Exec(ctx, `INSERT INTO applied (message_id, body, attempt) VALUES ($1, $2, $3)`, m.ID, string(m.Body), m.Attempt)
	return err
}

// publish sends a persistent message and waits for the broker's confirm.
func (b *testBundle) publish(t *testing.T, exchange, key, id, body string) {
	t.Helper()
	b.publishHeaders(t, exchange, key, id, body, nil)
}

// publishHeaders is publish with headers.
func (b *testBundle) publishHeaders(t *testing.T, exchange, key, id, body string, h amqp.Table) {
	t.Helper()
	b.send(t, exchange, key, amqp.Publishing{
		MessageId: id, Body: []byte(body), Headers: h, ContentType: "text/plain", DeliveryMode: amqp.Persistent,
	})
}

// send publishes p and waits for the broker's confirm.
func (b *testBundle) send(t *testing.T, exchange, key string, p amqp.Publishing) {
	t.Helper()
	id := p.MessageId
	dc, err := b.ch.PublishWithDeferredConfirm(exchange, key, true, false, p)
	if err != nil {
		t.Fatal(err)
	}
	if !dc.Wait() {
		t.Fatalf("publish %s: nacked", id)
	}
}

// publishMany publishes id -> body pairs with pipelined confirms.
func (b *testBundle) publishMany(t *testing.T, bodies map[string]string) {
	t.Helper()
	var dcs []*amqp.DeferredConfirmation
	for id, body := range bodies {
		dc, err := b.ch.PublishWithDeferredConfirm("", b.queue, true, false, amqp.Publishing{
			MessageId: id, Body: []byte(body), DeliveryMode: amqp.Persistent,
		})
		if err != nil {
			t.Fatal(err)
		}
		dcs = append(dcs, dc)
	}
	for _, dc := range dcs {
		if !dc.Wait() {
			t.Fatal("publish nacked")
		}
	}
}

// appliedCount returns how many business rows message id has.
func (b *testBundle) appliedCount(t *testing.T, id string) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(context.Background(), `SELECT count(*) FROM applied WHERE message_id = $1`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// metric returns the value of a counter or gauge in the registry.
func (b *testBundle) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("metric %s%v not found", name, labels)
	return 0
}

// recorder keeps the consumer's events and wakes waiters on each one.
type recorder struct {
	mu      sync.Mutex
	events  []inbox.Event
	changed chan struct{}
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) add(e inbox.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *recorder) snapshot() ([]inbox.Event, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]inbox.Event(nil), r.events...), r.changed
}

// wait blocks until cond holds over the events so far.
func (r *recorder) wait(t *testing.T, what string, cond func([]inbox.Event) bool) []inbox.Event {
	t.Helper()
	timeout := time.NewTimer(waitLimit)
	defer timeout.Stop()
	for {
		evs, changed := r.snapshot()
		if cond(evs) {
			return evs
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("timed out waiting for %s; events: %v", what, kinds(evs))
		}
	}
}

func count(evs []inbox.Event, kind inbox.EventKind, id string) int {
	n := 0
	for _, e := range evs {
		if e.Kind == kind && (id == "*" || e.MessageID == id) {
			n++
		}
	}
	return n
}

func kinds(evs []inbox.Event) []string {
	var s []string
	for _, e := range evs {
		s = append(s, e.Kind.String())
	}
	if len(s) > 50 {
		s = append(s[:50], "...")
	}
	return s
}

func deleteTopology(amqpURL string, topo inbox.Topology) {
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	names := []string{topo.Queue, inbox.DeadQueue(topo.Queue)}
	for _, d := range topo.RetryDelays {
		names = append(names, inbox.RetryQueue(topo.Queue, d))
	}
	for _, n := range names {
		_, _ = ch.QueueDelete(n, false, false, false)
	}
	if topo.Exchange != "" {
		_ = ch.ExchangeDelete(topo.Exchange, false, false)
	}
}
