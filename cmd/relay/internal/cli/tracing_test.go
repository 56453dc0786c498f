package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

func TestTracingWanted(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		env  map[string]string
		on   bool
		err  string // a substring of the error, "" for none
	}{
		{name: "nothing set: off", env: nil},
		{name: "endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, on: true},
		{name: "traces endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, on: true},
		{name: "exporter otlp, default endpoint", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, on: true},
		{name: "exporter none wins over an endpoint", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}},
		{name: "sdk disabled", env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}},
		{name: "unsupported exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, err: `OTEL_TRACES_EXPORTER: "zipkin" is not supported`},
		{name: "grpc", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, err: `OTEL_EXPORTER_OTLP_PROTOCOL: "grpc"`},
		{name: "grpc with tracing off: ignored", env: map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}},
		{name: "traces protocol wins", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, on: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			on, err := tracingWanted(func(k string) string { return c.env[k] })
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one containing %q", err, c.err)
				}
				return
			}
			if err != nil || on != c.on {
				t.Fatalf("on %v, error %v; want on %v", on, err, c.on)
			}
		})
	}
}

// With tracing off no SDK and no exporter exist: the relay gets a nil
// provider. With an endpoint, spans reach an OTLP receiver. Not parallel:
// the exporter reads the endpoint from the process environment.
func TestSetupTracing(t *testing.T) {
	ctx := context.Background()
	tp, shutdown, err := setupTracing(ctx, func(string) string { return "" }, "test")
	if err != nil || tp != nil {
		t.Fatalf("tracing off: provider %v, error %v; want neither", tp, err)
	}
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	recv := testenv.NewOTLPReceiver(t)
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": recv.URL}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", recv.URL)
	tp, shutdown, err = setupTracing(ctx, func(k string) string { return env[k] }, "test")
	if err != nil || tp == nil {
		t.Fatalf("tracing on: provider %v, error %v", tp, err)
	}
	_, span := tp.Tracer("t").Start(ctx, "probe")
	span.End()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	spans := recv.Spans()
	if len(spans) != 1 || spans[0].Name != "probe" || spans[0].Service != serviceName {
		t.Fatalf("received %+v, want the probe span of service %q", spans, serviceName)
	}
}
