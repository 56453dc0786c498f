package tracing

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// unsetGlobal is the global tracer provider as it is before anyone sets
// one: a delegate that stays a no-op until otel.SetTracerProvider is
// called. Package initialisation runs before any main, so this is the
// delegate, not a provider a binary installed.
var unsetGlobal = otel.GetTracerProvider()

// Tracer is a library's tracer with the propagator it reads and writes
// message headers with. The zero value is off.
type Tracer struct {
	trace.Tracer
	Prop propagation.TextMapPropagator
	// On is false when the provider can never record or propagate a span
	// (the no-op, or the global provider while nobody has set one): the
	// callers then skip all per-message work.
	On bool
}

// New picks the provider (nil: the global one as it is now) and the
// propagator (nil: W3C trace context, the traceparent and tracestate
// headers the outbox table documents) for the instrumentation scope name.
func New(name string, tp trace.TracerProvider, prop propagation.TextMapPropagator) Tracer {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if prop == nil {
		prop = propagation.TraceContext{}
	}
	return Tracer{Tracer: tp.Tracer(name), Prop: prop, On: Enabled(tp)}
}

// Enabled reports whether tp may record spans: false for the no-op
// provider and for the global provider nobody has set.
func Enabled(tp trace.TracerProvider) bool {
	switch tp.(type) {
	case nil, noop.TracerProvider, *noop.TracerProvider:
		return false
	}
	return tp != unsetGlobal
}

// Extract returns ctx carrying the span context found in h, and no other:
// a message without one starts a trace of its own, never a child of
// whatever span ctx held (the span around the caller's Run).
func (t Tracer) Extract(ctx context.Context, h amqp.Table) context.Context {
	return t.Prop.Extract(trace.ContextWithSpanContext(ctx, trace.SpanContext{}), TableCarrier(h))
}

// Inject writes ctx's span context into h, which must not be nil.
func (t Tracer) Inject(ctx context.Context, h amqp.Table) {
	t.Prop.Inject(ctx, TableCarrier(h))
}

// TableCarrier reads and writes trace context in AMQP headers. Only string
// values are read: a traceparent of another type is ignored, not an error.
type TableCarrier amqp.Table

// Get returns the string value of key, or "".
func (c TableCarrier) Get(key string) string {
	s, _ := c[key].(string)
	return s
}

// Set stores value under key.
func (c TableCarrier) Set(key, value string) { c[key] = value }

// Keys lists the header names.
func (c TableCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Span attributes the relay and the inbox both set, beyond the messaging
// conventions.
const (
	// AttrOutcome is what became of the message: for the relay published,
	// retry, dead, suspected, released or abandoned; for the inbox the
	// Event kind (applied, duplicate, retried, dead_lettered, requeued).
	AttrOutcome = attribute.Key("outboxrelay.outcome")
	// AttrAttempt is the attempt this span is, from 1.
	AttrAttempt = attribute.Key("outboxrelay.attempt")
)
