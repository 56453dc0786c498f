package inbox

import (
	"context"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/outboxrelay/outboxrelay/internal/tracing"
)

// With the inbox's tracing off, the span it hands back is nobody's: ending
// it (as handle does for every delivery) leaves the caller's span open.
func TestTracingOffLeavesTheCallersSpanAlone(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	ctx, caller := tp.Tracer("app").Start(context.Background(), "run the consumer")
	c := &Consumer{cfg: Config{Queue: "q", Name: "n"}, tracer: tracing.Tracer{On: false}}

	_, span := c.startProcess(ctx, amqp.Delivery{MessageId: "m"}, Message{Attempt: 1})
	span.End()
	if n := len(rec.Ended()); n != 0 {
		t.Errorf("%d spans ended by the inbox with tracing off, want the caller's left open", n)
	}
	caller.End()
}
