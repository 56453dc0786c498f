package test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// One trace runs from a span around outbox.Enqueue,
// through the relay process's publish span, to the inbox's process span and
// a span the handler starts, each the parent of the next. Everything is
// exported over OTLP/HTTP, by the real exporters, to one receiver in the
// test; the relay turns tracing on from OTEL_EXPORTER_OTLP_ENDPOINT alone.
func TestOneTraceFromEnqueueToHandler(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	_, ch := testenv.AMQP(t, env.AMQPURL)
	ctx := context.Background()
	recv := testenv.NewOTLPReceiver(t)

	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(recv.URL+"/v1/traces"))
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	topo := inbox.Topology{Exchange: testenv.Name("traced"), Queue: testenv.Name("traced"), BindingKeys: []string{"order.created"}}
	if err := inbox.DeclareTopology(ctx, ch, topo); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteTopology(t, env.AMQPURL, topo) })

	// The producer's transaction, inside the test's span.
	pctx, producer := tp.Tracer("test").Start(ctx, "place order")
	tx, err := pool.Begin(pctx)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := outbox.Enqueue(pctx, tx, outbox.Message{Exchange: topo.Exchange, RoutingKey: "order.created", Payload: []byte(`{"order":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(pctx); err != nil {
		t.Fatal(err)
	}
	producer.End()

	startRelay(t, "RELAY_DATABASE_URL="+dsn, "RELAY_AMQP_URL="+env.AMQPURL,
		"OTEL_EXPORTER_OTLP_ENDPOINT="+recv.URL, "OTEL_SERVICE_NAME=relay-under-test", "OTEL_BSP_SCHEDULE_DELAY=50")

	consumer, err := inbox.New(inbox.Config{
		Queue: topo.Queue, Name: "traced", DB: pool, AMQPURLs: []string{env.AMQPURL},
		Handler: func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
			_, span := tp.Tracer("handler").Start(ctx, "apply order")
			defer span.End()
			_, err := tx.Exec(ctx, `SELECT 1`)
			return err
		},
		TracerProvider: tp,
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, consumer)

	byName := map[string]testenv.Span{}
	testenv.Eventually(t, time.Minute, "the four spans of the message's trace", func() (bool, error) {
		for _, s := range recv.Spans() {
			byName[s.Name] = s
		}
		_, ok := byName["process "+topo.Queue]
		_, ok2 := byName["publish "+topo.Exchange]
		_, ok3 := byName["apply order"]
		return ok && ok2 && ok3, nil
	})
	root, pub, proc, h := byName["place order"], byName["publish "+topo.Exchange], byName["process "+topo.Queue], byName["apply order"]
	for _, c := range []struct {
		child, parent testenv.Span
	}{{pub, root}, {proc, pub}, {h, proc}} {
		if c.child.TraceID != root.TraceID || c.child.Parent != c.parent.ID {
			t.Errorf("span %q: trace %s parent %s, want trace %s parent %s (%q)",
				c.child.Name, c.child.TraceID, c.child.Parent, root.TraceID, c.parent.ID, c.parent.Name)
		}
	}
	if pub.Service != "relay-under-test" {
		t.Errorf("publish span from service %q, want the relay process's", pub.Service)
	}
	want := map[string]string{
		"messaging.system": "rabbitmq", "messaging.operation.name": "publish", "messaging.operation.type": "send",
		"messaging.destination.name": topo.Exchange, "messaging.message.id": ids[0], "outboxrelay.outcome": "published",
		"messaging.rabbitmq.destination.routing_key": "order.created", "outboxrelay.attempt": "int_value:1",
	}
	checkAttrs(t, pub, want)
	if _, ok := pub.Attrs["outboxrelay.outbox.wait_seconds"]; !ok {
		t.Errorf("publish span has no outboxrelay.outbox.wait_seconds: %v", pub.Attrs)
	}
	checkAttrs(t, proc, map[string]string{
		"messaging.system": "rabbitmq", "messaging.operation.type": "process", "messaging.message.id": ids[0],
		"messaging.destination.name": topo.Queue, "outboxrelay.outcome": "applied",
	})
	if fmt.Sprint(proc.Events) != "[applied]" {
		t.Errorf("process span events %v, want [applied]", proc.Events)
	}
}

func checkAttrs(t *testing.T, s testenv.Span, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if s.Attrs[k] != v {
			t.Errorf("span %q: %s = %q, want %q", s.Name, k, s.Attrs[k], v)
		}
	}
}

// deleteTopology removes the exchange and the queues DeclareTopology made
// (default retry delays).
func deleteTopology(t *testing.T, amqpURL string, topo inbox.Topology) {
	conn, ch := testenv.AMQP(t, amqpURL)
	defer conn.Close()
	queues := []string{topo.Queue, inbox.DeadQueue(topo.Queue)}
	for _, d := range inbox.DefaultRetryDelays {
		queues = append(queues, inbox.RetryQueue(topo.Queue, d))
	}
	for _, q := range queues {
		_, _ = ch.QueueDelete(q, false, false, false)
	}
	_ = ch.ExchangeDelete(topo.Exchange, false, false)
}
