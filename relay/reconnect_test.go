package relay_test

import (
	"context"
	"io"
	"log/slog"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
	"github.com/outboxrelay/outboxrelay/relay"
)

// counter reads an unlabelled counter's (or gauge's) value from reg.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			return m.GetCounter().GetValue() + m.GetGauge().GetValue() // the other kind reads 0
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// No goroutine leak across 100 reconnects.
// The goroutine count after 100 cut-and-reconnect cycles settles back to
// what it was after the first connect, and goleak (TestMain) checks that
// nothing outlives Run.
func TestNoGoroutineLeakAcross100Reconnects(t *testing.T) {
	env := testenv.Services(t)
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, false)
	u, _ := url.Parse(env.AMQPURL)
	proxy := testenv.NewProxy(t, u.Host, true)
	u.Host = proxy.Addr()
	reg := prometheus.NewRegistry()
	published := make(chan relay.BatchResult, 1000)
	r := startRelay(t, pool, relay.Config{
		AMQPURLs:     []string{u.String()},
		ReconnectMin: time.Millisecond,
		ReconnectMax: 5 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registerer:   reg,
		OnBatch:      func(b relay.BatchResult) { published <- b },
	})
	ctx := context.Background()
	ready := func() (bool, error) { err := r.Ready(ctx); return err == nil, err }
	testenv.Eventually(t, 30*time.Second, "first connect", ready)
	baseline := runtime.NumGoroutine()

	for i := 1; i <= 100; i++ {
		proxy.Cut()
		testenv.Eventually(t, 30*time.Second, "reconnect", func() (bool, error) {
			if counter(t, reg, "outboxrelay_relay_broker_reconnects_total") < float64(i) {
				return false, nil
			}
			return ready()
		})
	}
	// The relay still works after all that.
	ids, err := outbox.Enqueue(ctx, pool, outbox.Message{RoutingKey: queue, Payload: []byte("after 100 reconnects")})
	if err != nil {
		t.Fatal(err)
	}
	for got := false; !got; {
		select {
		case b := <-published:
			for _, id := range b.Published {
				got = got || id == ids[0]
			}
		case <-time.After(30 * time.Second):
			t.Fatal("nothing published after the reconnects")
		}
	}
	testenv.Eventually(t, 30*time.Second, "goroutines to settle to the baseline", func() (bool, error) {
		return runtime.NumGoroutine() <= baseline+3, nil
	})
}

// Two relays in one process share one registry; each
// one's series carry its name, and the two published counts add up to the
// rows. Two unnamed relays on one registry get an error, not a panic.
func TestTwoRelaysShareARegistry(t *testing.T) {
	env := testenv.Services(t)
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, true)
	reg := prometheus.NewRegistry()
	for _, name := range []string{"a", "b"} {
		startRelay(t, pool, relay.Config{AMQPURLs: []string{env.AMQPURL}, Name: name, Registerer: reg,
			BatchSize: 20, Logger: testLogger()})
	}
	msgs := make([]outbox.Message, 500)
	for i := range msgs {
		msgs[i] = outbox.Message{RoutingKey: queue, Payload: []byte(`{}`)}
	}
	if _, err := outbox.Enqueue(context.Background(), pool, msgs...); err != nil {
		t.Fatal(err)
	}
	testenv.WaitPublished(t, pool, time.Minute)
	a := labelledCounter(t, reg, "outboxrelay_relay_published_total", "relay", "a")
	b := labelledCounter(t, reg, "outboxrelay_relay_published_total", "relay", "b")
	if a+b != float64(len(msgs)) {
		t.Errorf("published_total: relay a %v + relay b %v, want %d", a, b, len(msgs))
	}

	unnamed := prometheus.NewRegistry()
	if _, err := relay.New(pool, relay.Config{AMQPURLs: []string{env.AMQPURL}, Registerer: unnamed}); err != nil {
		t.Fatal(err)
	}
	_, err := relay.New(pool, relay.Config{AMQPURLs: []string{env.AMQPURL}, Registerer: unnamed})
	if err == nil || !strings.Contains(err.Error(), "Config.Name") {
		t.Errorf("a second unnamed relay on one registry: err = %v, want one naming Config.Name", err)
	}
}
