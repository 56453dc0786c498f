package tracing

import (
	"context"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// A message without a traceparent starts a trace of its own: Extract drops
// the span ctx held (the one around the caller's Run); with one, the
// message's context wins.
func TestExtractTakesOnlyTheMessagesContext(t *testing.T) {
	t.Parallel()
	caller := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled,
	})
	ctx := trace.ContextWithSpanContext(context.Background(), caller)
	tr := New("test", noop.NewTracerProvider(), nil)

	if sc := trace.SpanContextFromContext(tr.Extract(ctx, amqp.Table{})); sc.IsValid() {
		t.Errorf("no traceparent: got the caller's span context %v, want none", sc.TraceID())
	}
	h := amqp.Table{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
	sc := trace.SpanContextFromContext(tr.Extract(ctx, h))
	if sc.TraceID().String() != "0af7651916cd43dd8448eb211c80319c" || !sc.IsRemote() {
		t.Errorf("traceparent: got trace %s (remote %v), want the message's", sc.TraceID(), sc.IsRemote())
	}
}
