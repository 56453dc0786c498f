package bench

import (
	"testing"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// BenchmarkDrainTracing drains BENCH_TRACE_N rows (20,000) into a quorum
// queue with tracing off, then with tracing on (every row sampled, its
// publish span exported over OTLP/HTTP to a receiver in this process), and
// reports the cost as the ratio of the two rates. The rows carry no
// traceparent, so each publish span is a root: every row is sampled, the
// most the relay can be asked to export.
func BenchmarkDrainTracing(b *testing.B) {
	n := envInt("BENCH_TRACE_N", 20_000)
	for range b.N {
		d := newBed(b, true)
		raw, _, _ := rawLimit(b, d.amqpURL, d.queue, n)
		purge(b, d.ch, d.queue)
		off := drain(b, d, n, 1, 0)
		purge(b, d.ch, d.queue)

		d = newBed(b, true)
		recv := testenv.NewOTLPReceiver(b)
		on := drain(b, d, n, 1, 0, "OTEL_EXPORTER_OTLP_ENDPOINT="+recv.URL)
		purge(b, d.ch, d.queue)
		spans := len(recv.Spans()) // the relay flushed at exit (drain stops it)

		report("tracing  quorum  1 relay: off %6.0f msg/s (ratio to raw %.2f, relay CPU %.1f µs/msg) | on %6.0f msg/s (ratio %.2f, relay CPU %.1f µs/msg, %d spans exported) | on/off %.2f",
			off.rate, off.rate/raw, off.relayCPU, on.rate, on.rate/raw, on.relayCPU, spans, on.rate/off.rate)
		b.ReportMetric(off.rate, "off_msg/s")
		b.ReportMetric(on.rate, "on_msg/s")
		b.ReportMetric(on.rate/off.rate, "on/off")
		b.ReportMetric(0, "ns/op")
	}
}
