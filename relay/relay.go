package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxrelay/outboxrelay/internal/backoff"
	"github.com/outboxrelay/outboxrelay/internal/defaults"
	"github.com/outboxrelay/outboxrelay/internal/tracing"
)

// Config tunes a Relay. Zero values take the documented defaults.
type Config struct {
	// AMQPURLs is the broker failover list, tried in turn. Required.
	AMQPURLs []string
	// BatchSize is the number of rows claimed per batch (default 500).
	BatchSize int
	// Workers is the number of concurrent claim/publish loops, each with
	// its own channel and database transaction (default 2).
	Workers int
	// PollInterval is the fallback when no notification arrives (default 1s).
	PollInterval time.Duration
	// ConfirmTimeout is how long the broker may go without confirming
	// anything while confirms are outstanding (default 5s). Past it the
	// node makes no progress: the rows in flight are released uncharged
	// and the relay moves to the next node of AMQPURLs.
	ConfirmTimeout time.Duration
	// MaxAttempts parks a row as dead after this many failures (default 10).
	MaxAttempts int
	// RetryBase and RetryMax shape the backoff between a row's attempts
	// (defaults 1s and 5m).
	RetryBase, RetryMax time.Duration
	// ReconnectMin and ReconnectMax shape reconnect backoff (100ms, 15s).
	ReconnectMin, ReconnectMax time.Duration
	// Heartbeat is the AMQP heartbeat (default 10s).
	Heartbeat time.Duration
	// MaxPayloadBytes parks larger payloads as dead without loading them
	// (default 16 MiB).
	MaxPayloadBytes int
	// MaxBatchBytes caps the bytes one batch loads and holds (default 16
	// MiB, at least MaxPayloadBytes): payloads, short strings, and headers
	// as their text plus a bound on what they decode to (see
	// cutToBudget). The relay's memory follows Workers times this, not the
	// table. A batch stops at the row that would cross it (its first row
	// always fits).
	MaxBatchBytes int64
	// ShutdownTimeout is how long in-flight batches may finish after the
	// Run context ends (default 10s); then they are abandoned.
	ShutdownTimeout time.Duration
	// OrderingPolicy says what a key's later rows do while an earlier row
	// of the key is dead: OrderingBlock (default) holds them until the row
	// is requeued or discarded; OrderingSkip lets them go on. Either way
	// they wait while an earlier row is pending or retrying.
	OrderingPolicy OrderingPolicy
	// ParkUnroutable parks a row the broker returned as unroutable, or
	// whose exchange does not exist, dead at its first failure instead of
	// retrying it with backoff (see policy.go for why retrying is the
	// default).
	ParkUnroutable bool
	// StrictOrdering keeps at most one unconfirmed row per ordering key
	// (rows of other keys and rows without a key are still pipelined), so
	// a broker that refuses row k can never have accepted k+1 first. Off
	// by default: a key's run is pipelined, and such an overtake is
	// detected, counted and logged instead (see docs/design.md, "Ordering").
	StrictOrdering bool
	// RescanInterval bounds how long a worker draining a backlog goes
	// without a claim from the start of the table (default 1s).
	RescanInterval time.Duration
	// Retention deletes published rows older than this, in batches of
	// RetentionBatch every RetentionInterval, one relay at a time. Zero
	// disables it. Dead and pending rows are never deleted.
	Retention time.Duration
	// DeletePublished deletes each published row in the transaction that
	// records its confirm, instead of setting published_at (configuration
	// `retention: none`). A row is then written twice (the claim's lock,
	// the delete) and inserts no index entry, where a mark writes a new
	// row version with an entry in every index and leaves a dead one for
	// vacuum, and retention a delete later. Published rows are not kept:
	// the console, replay and status see none. Retention then deletes only
	// rows published earlier, before the switch (Retention is ignored).
	DeletePublished   bool
	RetentionInterval time.Duration // default 1m
	RetentionBatch    int           // default 1000
	// ListenDatabaseURL, if set, is a direct PostgreSQL URL for the LISTEN
	// connection, for when the pool goes through PgBouncer in transaction
	// mode (which cannot LISTEN).
	ListenDatabaseURL string
	// StatsInterval is how often the pending/dead gauges are refreshed
	// with two cheap index-only counts (default 15s).
	StatsInterval time.Duration
	// Name, if set, labels every metric relay=Name, so that several relays
	// can share one Registerer (each needs its own Name). Unnamed, the
	// series carry no such label.
	Name string
	// ConnectionName is shown in the RabbitMQ management UI.
	ConnectionName string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; nil registers nowhere.
	Registerer prometheus.Registerer
	// TracerProvider makes a span per published row (see trace.go); nil is
	// the global provider as it is when New is called, a no-op unless the
	// program installed one, and then the relay does no tracing work.
	TracerProvider trace.TracerProvider
	// Propagator reads a row's trace context from its headers and writes
	// the publish span's into the message; nil is W3C trace context
	// (traceparent, tracestate).
	Propagator propagation.TextMapPropagator
	// OnBatch, if set, is called after each batch commits. It runs on the
	// worker's goroutine and must be quick. Meant for tests and benchmarks.
	OnBatch func(BatchResult)

	// skipRowChecks publishes rows without checking them against AMQP's
	// and the broker's limits; set by tests (export_test.go) only.
	skipRowChecks bool
}

// OrderingPolicy says what a key's later rows do while an earlier row of
// the key is dead (Config.OrderingPolicy).
type OrderingPolicy string

// The ordering policies.
const (
	OrderingBlock OrderingPolicy = "block" // hold the key's later rows (the default)
	OrderingSkip  OrderingPolicy = "skip"  // publish them past the dead row
)

// BatchResult describes one committed batch.
type BatchResult struct {
	Published   []string // message ids marked published
	Failed      int      // rows charged a failed attempt
	Deferred    int      // rows the broker took none of, noted and delayed but not charged
	Released    int      // rows not charged: untouched (connection lost, stalled node), deferred or suspected
	CommittedAt time.Time
}

func (c *Config) setDefaults() {
	defaults.Set(&c.BatchSize, 500)
	defaults.Set(&c.Workers, 2)
	defaults.Set(&c.MaxAttempts, 10)
	defaults.Set(&c.MaxPayloadBytes, 16<<20)
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = max(16<<20, int64(c.MaxPayloadBytes))
	}
	defaults.Set(&c.PollInterval, time.Second)
	defaults.Set(&c.ConfirmTimeout, 5*time.Second)
	defaults.Set(&c.RetryBase, time.Second)
	defaults.Set(&c.RetryMax, 5*time.Minute)
	defaults.Set(&c.ReconnectMin, 100*time.Millisecond)
	defaults.Set(&c.ReconnectMax, 15*time.Second)
	defaults.Set(&c.Heartbeat, 10*time.Second)
	defaults.Set(&c.ShutdownTimeout, 10*time.Second)
	defaults.Set(&c.StatsInterval, 15*time.Second)
	defaults.Set(&c.RescanInterval, time.Second)
	defaults.Set(&c.RetentionInterval, time.Minute)
	defaults.Set(&c.RetentionBatch, 1000)
	if c.OrderingPolicy == "" {
		c.OrderingPolicy = OrderingBlock
	}
	if c.ConnectionName == "" {
		host, _ := os.Hostname()
		c.ConnectionName = fmt.Sprintf("outbox-relay %s/%d", host, os.Getpid())
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *Config) validate() error {
	for _, f := range []struct {
		name  string
		value int64
	}{
		{"BatchSize", int64(c.BatchSize)}, {"Workers", int64(c.Workers)}, {"MaxAttempts", int64(c.MaxAttempts)},
		{"MaxPayloadBytes", int64(c.MaxPayloadBytes)}, {"Retention", int64(c.Retention)},
	} {
		if f.value < 0 {
			return fmt.Errorf("relay: Config.%s must not be negative (%d)", f.name, f.value)
		}
	}
	switch {
	case len(c.AMQPURLs) == 0:
		return errors.New("relay: Config.AMQPURLs is empty")
	case c.OrderingPolicy != OrderingBlock && c.OrderingPolicy != OrderingSkip:
		return fmt.Errorf("relay: Config.OrderingPolicy %q is neither %q nor %q", c.OrderingPolicy, OrderingBlock, OrderingSkip)
	case c.MaxBatchBytes < int64(c.MaxPayloadBytes):
		return fmt.Errorf("relay: Config.MaxBatchBytes (%d) is below MaxPayloadBytes (%d)", c.MaxBatchBytes, c.MaxPayloadBytes)
	case c.RetryMax < c.RetryBase:
		return fmt.Errorf("relay: Config.RetryMax (%s) is below RetryBase (%s)", c.RetryMax, c.RetryBase)
	case c.ReconnectMax < c.ReconnectMin:
		return fmt.Errorf("relay: Config.ReconnectMax (%s) is below ReconnectMin (%s)", c.ReconnectMax, c.ReconnectMin)
	}
	return nil
}

// DefaultConnectTimeout bounds each host's connection attempt when the
// database URL sets no connect_timeout (see ConnDefaults).
const DefaultConnectTimeout = 5 * time.Second

// ConnDefaults fills in what a relay's database connections need to follow
// a failover: a per-host connect timeout (DefaultConnectTimeout) unless the
// URL set connect_timeout. Without one, pgx waits on the first host of a
// multi-host URL for as long as the operating system keeps the attempt
// open, forever if the host accepts TCP and never answers, and never tries
// the next one: a dead primary would stall the relay although the promoted
// standby is one host away. (connect_timeout=0, which libpq reads as "no
// limit", cannot be told from an absent one and gets the default too.)
// The binary applies it to database_url and the relay to
// ListenDatabaseURL; a program passing its own pool should call it on the
// pool's ConnConfig.
func ConnDefaults(c *pgconn.Config) {
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
}

// Relay moves rows from the outbox table to RabbitMQ. Create it with New
// and run it with Run; it is safe to run several relays, in one process or
// many, against one table.
type Relay struct {
	cfg    Config
	pool   *pgxpool.Pool
	log    *slog.Logger
	m      *metrics
	broker *broker
	wake   chan struct{}
	retry  backoff.Policy
	health health
	tracer tracing.Tracer
	// publishMu lets workers publish together (read lock), or one alone
	// (write lock) when its batch holds a suspected row.
	publishMu sync.RWMutex
	progress  progress
}

// New builds a Relay over pool, which must reach the database whose
// search_path leads to the outbox table.
func New(pool *pgxpool.Pool, cfg Config) (*Relay, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer, cfg.Name)
	if err != nil {
		return nil, err
	}
	reconnect := backoff.Policy{Base: cfg.ReconnectMin, Max: cfg.ReconnectMax}
	r := &Relay{
		cfg:    cfg,
		pool:   pool,
		log:    cfg.Logger,
		m:      m,
		wake:   make(chan struct{}, 1),
		retry:  backoff.Policy{Base: cfg.RetryBase, Max: cfg.RetryMax},
		health: health{fatal: make(chan error, 1)},
		tracer: tracing.New("github.com/outboxrelay/outboxrelay/relay", cfg.TracerProvider, cfg.Propagator),
	}
	r.broker = newBroker(cfg.AMQPURLs, cfg.Heartbeat, reconnect, cfg.ConnectionName, cfg.Logger, m, &r.health)
	return r, nil
}

// graceContext returns the context that carries the in-flight I/O: it
// outlives ctx by ShutdownTimeout, so a batch can finish after a stop.
func (r *Relay) graceContext(ctx context.Context) (context.Context, context.CancelFunc) {
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		select {
		case <-ctx.Done():
			t := time.NewTimer(r.cfg.ShutdownTimeout)
			defer t.Stop()
			select {
			case <-t.C:
				r.log.Warn("shutdown timeout: abandoning in-flight batches")
				cancelHard()
			case <-hard.Done():
			}
		case <-hard.Done():
		}
	}()
	return hard, cancelHard
}

// Run publishes until ctx ends, then lets in-flight batches finish for up
// to ShutdownTimeout before abandoning them (an abandoned batch is rolled
// back and published again later). It returns nil after a clean stop, and
// an error wrapping ErrPermanent when the database refuses the relay for
// good from the start (wrong password, missing database, table or
// privilege) for longer than StartupGrace, and one wrapping
// ErrBrokerRefused when every broker dial from the start was refused for
// good (credentials, vhost, a port that is not an AMQP broker's; see
// amqpconn.Refused) for as long: retrying would only spin. A broker that
// is down is waited for, however long.
func (r *Relay) Run(parent context.Context) error {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	go func() {
		select {
		case err := <-r.health.fatal:
			cancel(err)
		case <-ctx.Done():
		}
	}()
	hard, cancelHard := r.graceContext(ctx)
	defer cancelHard()

	brokerDone := make(chan struct{})
	go func() {
		defer close(brokerDone)
		_ = r.broker.run(hard)
	}()

	var wg sync.WaitGroup
	wg.Add(3 + r.cfg.Workers)
	go func() {
		defer wg.Done()
		r.retain(ctx)
	}()
	go func() {
		defer wg.Done()
		r.listen(ctx)
	}()
	go func() {
		defer wg.Done()
		r.stats(ctx)
	}()
	for i := 0; i < r.cfg.Workers; i++ {
		w := &worker{r: r, id: i, log: r.log.With("worker", i), keysPending: true}
		go func() {
			defer wg.Done()
			w.run(ctx, hard)
		}()
	}
	r.log.Info("relay started", append(r.databaseAttrs(ctx), "workers", r.cfg.Workers, "batch_size", r.cfg.BatchSize)...)
	wg.Wait()
	cancelHard()
	<-brokerDone
	if err := context.Cause(ctx); err != nil && parent.Err() == nil {
		r.log.Error("relay stopped", "err", err)
		return err
	}
	r.log.Info("relay stopped")
	return nil
}

// Ready reports whether the database answers and accepts writes (a
// read-only server, such as a standby not yet promoted, cannot take the
// relay's claims), the relay's claims succeed, and a broker connection is
// open; it backs /readyz. After a permanent database error (see
// ErrPermanent) it stays not ready, with the reason, until a batch
// succeeds again.
func (r *Relay) Ready(ctx context.Context) error {
	if err := r.health.permanent(); err != nil {
		return err
	}
	var readOnly string
	if err := r.pool.QueryRow(ctx, "SHOW transaction_read_only").Scan(&readOnly); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	if readOnly == "on" {
		return fmt.Errorf("database: %w", ErrReadOnly)
	}
	if !r.broker.connected() {
		if err := r.health.brokerRefused(); err != nil {
			return err
		}
		return ErrBrokerUnavailable
	}
	return nil
}

// statsQueryTimeout is the least time the stats query is given.
const statsQueryTimeout = 5 * time.Second

// stats refreshes the backlog gauges until ctx ends.
func (r *Relay) stats(ctx context.Context) {
	t := time.NewTicker(r.cfg.StatsInterval)
	defer t.Stop()
	// The query may take longer than a short interval on a busy database:
	// cutting it at the interval would then fail every round and no
	// progress line would ever be written. Ticks missed meanwhile are
	// dropped, so a slow query never piles up.
	timeout := max(r.cfg.StatsInterval, statsQueryTimeout)
	for {
		qctx, cancel := context.WithTimeout(ctx, timeout)
		st, err := ReadStatus(qctx, r.pool)
		cancel()
		if r.cfg.OrderingPolicy == OrderingSkip {
			st = st.Skip()
		}
		if err == nil {
			r.logProgress(st)
			r.m.pendingRows.Set(float64(st.Pending))
			r.m.dueRows.Set(float64(st.Due))
			r.m.deadRows.Set(float64(st.Dead))
			r.m.oldestPending.Set(st.OldestPendingAge.Seconds())
			r.m.blockedKeys.Set(float64(st.BlockedKeys))
			r.m.tableDeadTuples.Set(float64(st.DeadTuples))
			r.m.tableBytes.Set(float64(st.TableBytes))
		} else if ctx.Err() == nil {
			r.log.Debug("stats query failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// signal wakes one idle worker; it never blocks.
func (r *Relay) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}
