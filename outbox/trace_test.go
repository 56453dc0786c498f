package outbox_test

import (
	"context"
	"encoding/json"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// Enqueue writes the caller's span context into the row's headers, keeps a
// traceparent the caller set, and leaves the caller's map alone.
func TestEnqueueWritesTheCallersTraceContext(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	ts, err := trace.ParseTraceState("vendor=x")
	if err != nil {
		t.Fatal(err)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		TraceFlags: trace.FlagsSampled,
		TraceState: ts,
	})
	const want = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	const own = "00-11111111111111111111111111111111-2222222222222222-01"
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	callers := map[string]any{"h": "v"}
	ids, err := outbox.Enqueue(ctx, pool,
		outbox.Message{RoutingKey: "q", Payload: []byte("1")},
		outbox.Message{RoutingKey: "q", Payload: []byte("2"), Headers: callers},
		outbox.Message{RoutingKey: "q", Payload: []byte("3"), Headers: map[string]any{"traceparent": own}},
	)
	if err != nil {
		t.Fatal(err)
	}
	wants := []map[string]any{
		{"traceparent": want, "tracestate": "vendor=x"},
		{"traceparent": want, "tracestate": "vendor=x", "h": "v"},
		{"traceparent": own},
	}
	for i, id := range ids {
		var raw []byte
		if err := pool.QueryRow(ctx, `SELECT headers FROM outbox WHERE message_id = $1`, id).Scan(&raw); err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(wants[i]) {
			t.Errorf("row %d: headers %v, want %v", i, got, wants[i])
		}
		for k, v := range wants[i] {
			if got[k] != v {
				t.Errorf("row %d: header %s = %v, want %v", i, k, got[k], v)
			}
		}
	}
	if len(callers) != 1 {
		t.Errorf("the caller's headers map was changed: %v", callers)
	}

	// Without a span, nothing is added.
	ids, err = outbox.Enqueue(context.Background(), pool, outbox.Message{RoutingKey: "q", Payload: []byte("4")})
	if err != nil {
		t.Fatal(err)
	}
	var headers string
	if err := pool.QueryRow(ctx, `SELECT headers::text FROM outbox WHERE message_id = $1`, ids[0]).Scan(&headers); err != nil {
		t.Fatal(err)
	}
	if headers != "{}" {
		t.Errorf("headers without a span: %s, want {}", headers)
	}
}
