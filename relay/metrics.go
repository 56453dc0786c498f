package relay

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the relay's Prometheus series, registered on the registry the
// caller passes (never the global one).
type metrics struct {
	published            prometheus.Counter
	failed               *prometheus.CounterVec
	dead                 prometheus.Counter
	batches              prometheus.Counter
	batchSeconds         prometheus.Histogram
	latency              prometheus.Histogram
	brokerConnected      prometheus.Gauge
	brokerBlocked        prometheus.Gauge
	brokerBlockedSeconds prometheus.Counter
	brokerReconnects     prometheus.Counter
	brokerDialFailures   prometheus.Counter
	dbErrors             prometheus.Counter
	listenerConnected    prometheus.Gauge
	pendingRows          prometheus.Gauge
	dueRows              prometheus.Gauge
	deadRows             prometheus.Gauge
	oldestPending        prometheus.Gauge
	blockedKeys          prometheus.Gauge
	tableDeadTuples      prometheus.Gauge
	tableBytes           prometheus.Gauge
	retained             prometheus.Counter
	overtaken            prometheus.Counter
	suspected            prometheus.Counter
	emptyWakeups         prometheus.Counter
	stalls               *prometheus.CounterVec
	uncharged            *prometheus.CounterVec
	abandoned            prometheus.Counter
}

// failure reasons, the label values of outboxrelay_relay_publish_failures_total.
const (
	reasonUnroutable = "unroutable"
	reasonNacked     = "nacked"
	// reasonTimeout names a confirm timeout; it charges no row (see
	// blame.go), so it labels stalls, not failures.
	reasonTimeout       = "confirm_timeout"
	reasonTooLarge      = "too_large"
	reasonBadHeaders    = "bad_headers"
	reasonNoExchange    = "no_exchange"
	reasonChannelClosed = "channel_closed"
	// reasonConnectionLost: the connection died while the row was
	// published alone, so the row is to blame (it was already suspected).
	reasonConnectionLost = "connection_lost"
	// reasonUnencodable: amqp091-go refused to encode the message (the
	// row checks let through something the client cannot carry).
	reasonUnencodable = "unencodable"
)

// newMetrics builds the relay's series and registers them on reg (nil: on
// none). A named relay's series carry a relay=name label, so several relays
// can share one registry; two unnamed relays cannot, and the second gets an
// error, not a panic.
func newMetrics(reg prometheus.Registerer, name string) (*metrics, error) {
	const ns, sub = "outboxrelay", "relay"
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	m := &metrics{
		published: counter("published_total", "Rows published, confirmed by the broker and marked published."),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "publish_failures_total", Help: "Failed publish attempts, by reason."}, []string{"reason"}),
		dead:    counter("dead_total", "Rows parked as dead after their last allowed attempt."),
		batches: counter("batches_total", "Batches claimed and committed."),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "batch_duration_seconds", Help: "Claim to commit time of one batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "publish_latency_seconds", Help: "From a row's created_at to its confirmed publish.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 20)}),
		brokerConnected:      gauge("broker_connected", "1 while an AMQP connection is open."),
		brokerBlocked:        gauge("broker_blocked", "1 while the broker blocks publishing (connection.blocked: memory or disk alarm)."),
		brokerBlockedSeconds: counter("broker_blocked_seconds_total", "Time spent blocked by the broker."),
		brokerReconnects:     counter("broker_reconnects_total", "Broker connections lost after being established."),
		brokerDialFailures:   counter("broker_dial_failures_total", "Failed attempts to connect to a broker URL."),
		dbErrors:             counter("database_errors_total", "Batches abandoned because of a database error."),
		listenerConnected:    gauge("listener_connected", "1 while the LISTEN connection for insert notifications is up."),
		pendingRows:          gauge("pending_rows", "Rows neither published nor dead, as of the last stats query."),
		dueRows:              gauge("due_rows", "Pending rows available now, as of the last stats query."),
		deadRows:             gauge("dead_rows", "Rows parked as dead, as of the last stats query."),
		oldestPending:        gauge("oldest_pending_age_seconds", "Age of the oldest pending row, as of the last stats query."),
		blockedKeys:          gauge("blocked_keys", "Ordering keys with a dead row: held back under the block policy, as of the last stats query."),
		tableDeadTuples:      gauge("table_dead_tuples", "Dead tuples in the outbox table (pg_stat_user_tables), as of the last stats query."),
		tableBytes:           gauge("table_bytes", "pg_total_relation_size of the outbox table, as of the last stats query."),
		retained:             counter("retention_deleted_total", "Published rows deleted by retention."),
		overtaken:            counter("ordering_overtaken_total", "Keyed rows the broker confirmed after refusing an earlier row of their key in the same pipelined run (key order broken on the broker; see strict_ordering)."),
		suspected:            counter("suspected_total", "Rows in flight when the broker connection died under a batch; each is then published alone."),
		emptyWakeups:         counter("empty_wakeups_total", "Insert notifications after which the claim found nothing: the next one is honoured no sooner than 20 ms later (any role can NOTIFY)."),
		stalls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "broker_stalls_total", Help: "Sends on a live connection that made no progress, by reason: confirm_timeout (no confirm for confirm_timeout) or nacked (every message nacked)."}, []string{"reason"}),
		uncharged: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "uncharged_total", Help: "Rows sent during a stall and neither published nor charged an attempt, by reason (the broker's trouble is not the rows')."}, []string{"reason"}),
		abandoned: counter("broker_abandoned_total", "Live broker connections the relay left for another node because their node made no progress."),
	}
	for _, r := range []string{string(stallSilence), string(stallNacks)} {
		m.stalls.WithLabelValues(r)
		m.uncharged.WithLabelValues(r)
	}
	for _, r := range []string{reasonUnroutable, reasonNacked, reasonTooLarge, reasonBadHeaders, reasonNoExchange, reasonChannelClosed, reasonConnectionLost, reasonBadProperty, reasonUnencodable} {
		m.failed.WithLabelValues(r)
	}
	if err := m.register(reg, name); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers m's series on reg (nil: on none), under a relay=name
// label when name is set.
func (m *metrics) register(reg prometheus.Registerer, name string) error {
	if reg == nil {
		return nil
	}
	if name != "" {
		reg = prometheus.WrapRegistererWith(prometheus.Labels{"relay": name}, reg)
	}
	all := []prometheus.Collector{m.published, m.failed, m.dead, m.batches, m.batchSeconds, m.latency,
		m.brokerConnected, m.brokerBlocked, m.brokerBlockedSeconds, m.brokerReconnects,
		m.brokerDialFailures, m.dbErrors, m.listenerConnected,
		m.pendingRows, m.dueRows, m.deadRows, m.oldestPending,
		m.blockedKeys, m.tableDeadTuples, m.tableBytes, m.retained, m.overtaken, m.suspected,
		m.emptyWakeups, m.stalls, m.uncharged, m.abandoned}
	for i, c := range all {
		if err := reg.Register(c); err != nil {
			for _, done := range all[:i] {
				reg.Unregister(done)
			}
			return fmt.Errorf("relay: register metrics (relays sharing a registry need distinct Config.Name values): %w", err)
		}
	}
	return nil
}
