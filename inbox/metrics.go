package inbox

import "github.com/prometheus/client_golang/prometheus"

// metrics are the consumer's Prometheus series, registered on the registry
// the caller passes (never the global one). Every series carries a
// constant consumer label so several consumers can share one registry.
type metrics struct {
	processed       prometheus.Counter
	duplicates      prometheus.Counter
	retried         prometheus.Counter
	deadLettered    *prometheus.CounterVec
	handlerSeconds  prometheus.Histogram
	breakerState    prometheus.Gauge
	breakerOpens    prometheus.Counter
	consuming       prometheus.Gauge
	reconnects      prometheus.Counter
	dialFailures    prometheus.Counter
	forwardFailures prometheus.Counter
	pruned          prometheus.Counter
	isolated        prometheus.Gauge
	isolations      prometheus.Counter
	probeStalls     prometheus.Counter
	abandoned       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, consumer string) *metrics {
	const ns, sub = "outboxrelay", "inbox"
	labels := prometheus.Labels{"consumer": consumer}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help, ConstLabels: labels})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help, ConstLabels: labels})
	}
	m := &metrics{
		processed:  counter("processed_total", "Messages applied: handler succeeded and its transaction committed."),
		duplicates: counter("duplicates_total", "Deliveries recognised as already applied by the inbox table, acked without calling the handler."),
		retried:    counter("retried_total", "Failed attempts sent to a retry queue."),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "dead_lettered_total", Help: "Messages sent to the dead-letter queue, by reason.", ConstLabels: labels},
			[]string{"reason"}),
		handlerSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "handler_duration_seconds", Help: "Time spent in the handler, successful or not.", ConstLabels: labels,
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18)}),
		breakerState:    gauge("breaker_state", "Circuit breaker: 0 closed (consuming), 1 open (paused), 2 half-open (trial)."),
		breakerOpens:    counter("breaker_opens_total", "Times the circuit breaker opened and paused consuming."),
		consuming:       gauge("consuming", "1 while subscribed to the queue and receiving messages."),
		reconnects:      counter("broker_reconnects_total", "Broker connections lost after being established."),
		dialFailures:    counter("broker_dial_failures_total", "Failed attempts to connect to a broker URL."),
		forwardFailures: counter("forward_failures_total", "Retry or dead-letter copies the broker did not confirm; the original was requeued."),
		pruned:          counter("pruned_total", "Inbox rows deleted by retention."),
		isolated:        gauge("isolated", "1 while consuming with prefetch 1 after a connection was lost while consuming."),
		isolations:      counter("isolations_total", "Times a connection lost while consuming switched to prefetch 1."),
		probeStalls:     counter("broker_stalls_total", "Times the broker node failed the progress probe for ProbeTimeout: it could not reach the queue."),
		abandoned:       counter("broker_abandoned_total", "Live broker connections the consumer left for another node because their node could not reach the queue."),
	}
	for _, r := range []string{DeadReasonPermanent, DeadReasonMaxAttempts, DeadReasonNoMessageID, DeadReasonHeadersTooLarge} {
		m.deadLettered.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.processed, m.duplicates, m.retried, m.deadLettered, m.handlerSeconds,
			m.breakerState, m.breakerOpens, m.consuming, m.reconnects, m.dialFailures,
			m.forwardFailures, m.pruned, m.isolated, m.isolations, m.probeStalls, m.abandoned)
	}
	return m
}
