// Package tracing holds what the relay and the inbox share of
// OpenTelemetry: choosing the tracer provider and the propagator from a
// library's Config, telling whether tracing is on (so the hot path pays
// nothing when it is off), and carrying the trace context in AMQP headers.
//
// The libraries only use the OpenTelemetry API; creating an SDK and an
// exporter is the binary's business (cmd/relay/internal/cli). Without one, every
// provider here is a no-op and Enabled reports false.
package tracing
