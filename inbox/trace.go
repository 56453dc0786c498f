package inbox

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxrelay/outboxrelay/internal/tracing"
)

// attrDeadReason is why a message was dead-lettered (see DeadReason*).
const attrDeadReason = attribute.Key("outboxrelay.dead_reason")

// startProcess opens the process span of delivery d, a child of the trace
// context in its headers (the relay's publish span), and returns ctx
// carrying it: the handler receives that ctx, so its own spans nest under
// the process span. With tracing off it returns ctx as it is and the
// no-op span ctx already holds.
func (c *Consumer) startProcess(ctx context.Context, d amqp.Delivery, m Message) (context.Context, trace.Span) {
	if !c.tracer.On {
		// A span of nobody's: ending it must not end the caller's.
		return ctx, trace.SpanFromContext(context.Background())
	}
	ctx = c.tracer.Extract(ctx, d.Headers)
	return c.tracer.Start(ctx, "process "+c.cfg.Queue,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			semconv.MessagingSystemRabbitMQ,
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingOperationName("process"),
			semconv.MessagingDestinationName(c.cfg.Queue),
			semconv.MessagingConsumerGroupName(c.cfg.Name),
			semconv.MessagingRabbitMQDestinationRoutingKey(d.RoutingKey),
			semconv.MessagingMessageID(d.MessageId),
			semconv.MessagingMessageBodySize(len(d.Body)),
			tracing.AttrAttempt.Int(m.Attempt),
		))
}

// report records a message event on the span in ctx (the outcome as an
// attribute and an event; retries, requeues and dead-letters mark the span
// as an error) and hands it to Config.OnEvent.
func (c *Consumer) report(ctx context.Context, e Event) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		attrs := []attribute.KeyValue{tracing.AttrAttempt.Int(e.Attempt)}
		if e.DeadReason != "" {
			attrs = append(attrs, attrDeadReason.String(e.DeadReason))
		}
		span.AddEvent(e.Kind.String(), trace.WithAttributes(attrs...))
		span.SetAttributes(tracing.AttrOutcome.String(e.Kind.String()))
		if e.Err != nil {
			span.SetStatus(codes.Error, e.Err.Error())
		}
	}
	c.event(e)
}
