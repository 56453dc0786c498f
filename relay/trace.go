package relay

import (
	"context"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxrelay/outboxrelay/internal/tracing"
)

// Span attributes of the relay beyond the messaging conventions.
const (
	attrWaited    = attribute.Key("outboxrelay.outbox.wait_seconds")
	attrRowID     = attribute.Key("outboxrelay.outbox.id")
	attrReason    = attribute.Key("outboxrelay.failure_reason")
	attrKey       = attribute.Key("outboxrelay.ordering_key")
	defaultDestin = "amq.default" // the default exchange, as the conventions name it
)

// Outcomes of a publish span (outboxrelay.outcome).
const (
	spanPublished = "published" // confirmed and marked published
	spanRetry     = "retry"     // failed; charged an attempt, tried again later
	spanDead      = "dead"      // failed for good: parked as dead
	spanSuspected = "suspected" // in flight when the connection died; published alone next
	spanReleased  = "released"  // not decided in this batch; left pending, uncharged
	spanAbandoned = "abandoned" // the batch rolled back (context ended, database error)
)

// publishSpans are the spans of one batch's rows, by row index. A nil
// *publishSpans (tracing off) does nothing, so the publish path pays one
// nil check per row.
type publishSpans struct {
	r     *Relay
	spans []trace.Span
}

// beginSpans returns the span holder of a batch of n rows, or nil when
// tracing is off.
func (r *Relay) beginSpans(n int) *publishSpans {
	if !r.tracer.On {
		return nil
	}
	return &publishSpans{r: r, spans: make([]trace.Span, n)}
}

// start opens row i's publish span, a child of the trace context in the
// row's headers (a new trace without one), and writes the span's context
// into msg's headers so the consumer continues the trace.
func (s *publishSpans) start(ctx context.Context, i int, row *claimed, msg *amqp.Publishing) {
	if s == nil {
		return
	}
	if msg.Headers == nil {
		msg.Headers = amqp.Table{}
	}
	t := s.r.tracer
	dest := row.exchange
	if dest == "" {
		dest = defaultDestin
	}
	attrs := []attribute.KeyValue{
		semconv.MessagingSystemRabbitMQ,
		semconv.MessagingOperationTypeSend,
		semconv.MessagingOperationName("publish"),
		semconv.MessagingDestinationName(dest),
		semconv.MessagingRabbitMQDestinationRoutingKey(row.routingKey),
		semconv.MessagingMessageID(row.messageID),
		semconv.MessagingMessageBodySize(len(row.payload)),
		attrRowID.Int64(row.id),
		tracing.AttrAttempt.Int(row.attempts + 1),
		attrWaited.Float64(time.Since(row.createdAt).Seconds()),
	}
	if row.key != "" {
		attrs = append(attrs, attrKey.String(row.key))
	}
	ctx, span := t.Start(t.Extract(ctx, msg.Headers), "publish "+dest,
		trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	t.Inject(ctx, msg.Headers)
	s.spans[i] = span
}

// finish ends the spans of a committed batch with each row's outcome.
func (s *publishSpans) finish(rows []claimed, outs []outcome) {
	if s == nil {
		return
	}
	for i, span := range s.spans {
		if span == nil {
			continue
		}
		o := outs[i]
		switch o.state {
		case statePublished:
			span.SetAttributes(tracing.AttrOutcome.String(spanPublished))
		case stateFailed:
			result := spanRetry
			if o.permanent || rows[i].attempts+1 >= s.r.cfg.MaxAttempts {
				result = spanDead
			}
			span.SetAttributes(tracing.AttrOutcome.String(result), attrReason.String(o.reason))
			span.SetStatus(codes.Error, o.reason+": "+o.msg)
		case stateSuspected:
			span.SetAttributes(tracing.AttrOutcome.String(spanSuspected))
		default:
			span.SetAttributes(tracing.AttrOutcome.String(spanReleased))
		}
		span.End()
		s.spans[i] = nil
	}
}

// abandon ends the spans finish did not: the batch rolled back, so nothing
// it learned was kept.
func (s *publishSpans) abandon() {
	if s == nil {
		return
	}
	for i, span := range s.spans {
		if span != nil {
			span.SetAttributes(tracing.AttrOutcome.String(spanAbandoned))
			span.SetStatus(codes.Error, "batch rolled back")
			span.End()
			s.spans[i] = nil
		}
	}
}
