package outbox

import (
	"context"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// TraceParentHeader is the W3C trace context header the relay continues a
// row's trace from; TraceStateHeader travels with it.
const (
	TraceParentHeader = "traceparent"
	TraceStateHeader  = "tracestate"
)

// traceHeaders returns the W3C trace context of the span in ctx, or nil
// when ctx holds none. W3C trace context, not the program's global
// propagator: the table documents traceparent as the column's contract, and
// plain-SQL producers write that header too.
func traceHeaders(ctx context.Context) propagation.MapCarrier {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c
}

// withTrace returns h with the trace context tc added, unless tc is empty
// or the caller set a traceparent of their own. It never changes h, which
// belongs to the caller: it returns a copy.
func withTrace(h map[string]any, tc propagation.MapCarrier) map[string]any {
	if len(tc) == 0 {
		return h
	}
	if _, ok := h[TraceParentHeader]; ok {
		return h
	}
	out := make(map[string]any, len(h)+len(tc))
	for k, v := range h {
		out[k] = v
	}
	for k, v := range tc {
		out[k] = v
	}
	return out
}
