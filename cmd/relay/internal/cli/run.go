package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxrelay/outboxrelay/config"
	"github.com/outboxrelay/outboxrelay/internal/backoff"
	"github.com/outboxrelay/outboxrelay/internal/redact"
	"github.com/outboxrelay/outboxrelay/migrations"
	"github.com/outboxrelay/outboxrelay/relay"
)

// runRelay wires the relay and its HTTP endpoints as a run group: each part
// has a run and a stop, and the shutdown order is visible here. The HTTP
// server starts first, so /healthz answers and /readyz says why while the
// start check (checkStart) waits for the database; the relay runs once the
// check passes. The relay stops first (finishing in-flight batches), then
// the HTTP server, then the pool.
func runRelay(ctx context.Context, e *env, cfg config.Config, _ *pflag.FlagSet) error {
	poolCfg, err := poolConfig(cfg)
	if err != nil {
		return err
	}
	poolCfg.MaxConns = int32(cfg.Workers + 4)
	warnUnverified(e.log, &poolCfg.ConnConfig.Config, cfg.ListenDatabaseURL, cfg.AMQPURLs)
	setMemoryLimit(e, cfg)
	tp, stopTracing, err := setupTracing(ctx, os.Getenv, binaryInfo().version)
	if err != nil {
		return err
	}
	defer func() { // last: flushes the spans of the final batches
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := stopTracing(sctx); err != nil {
			e.log.Warn("tracing: spans not flushed at exit", "err", err)
		}
	}()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	poolCfg.ConnConfig.Tracer = newRoundTrips(reg)
	pool, err := pgxpool.NewWithConfig(context.WithoutCancel(ctx), poolCfg)
	if err != nil {
		return fmt.Errorf("database pool: %w", err)
	}
	defer pool.Close()

	r, err := relay.New(pool, relayConfig(cfg, e, reg, tp))
	if err != nil {
		return err
	}

	gate := &startGate{}
	gate.set("checking the database schema")
	reg.MustRegister(readyGauge(r, gate))
	if cfg.HTTPAddr != "" {
		stop, err := serveHTTP(ctx, e, cfg.HTTPAddr, handler(r, reg, gate, e.secrets))
		if err != nil {
			return err
		}
		defer stop() // after the relay has stopped
	}

	if err := checkStart(ctx, pool, cfg, e.log, gate); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil // stopped while waiting for the database: a clean stop
	}
	gate.set("")
	return r.Run(ctx) // returns after SIGTERM/SIGINT and in-flight batches
}

// startGate holds why the relay is not running yet, for /readyz; empty
// once the start check has passed.
type startGate struct {
	mu     sync.Mutex
	reason string
}

func (g *startGate) set(reason string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.reason = reason
}

func (g *startGate) get() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.reason
}

// checkStart checks, before the relay claims anything, that the schema is
// at this binary's version (migrations.Check). A missing or older schema
// ends the run at once: waiting cannot fix it, `relay migrate` can. A
// database that refuses the relay for good (wrong password or role,
// missing database) is retried for relay.StartupGrace, in case it is being
// set up beside us, and then ends the run, rather than spinning. A
// database that cannot be reached is waited for, with backoff, until ctx
// ends: it may be restarting.
func checkStart(ctx context.Context, pool *pgxpool.Pool, cfg config.Config, log *slog.Logger, gate *startGate) error {
	wait := backoff.Policy{Base: cfg.ReconnectMin, Max: cfg.ReconnectMax}
	var refusedSince, loggedAt time.Time
	var logged string
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, startCheckTimeout)
		err := migrations.Check(actx, pool)
		cancel()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, migrations.ErrNotMigrated):
			return err
		case relay.Permanent(err) != nil:
			if refusedSince.IsZero() {
				refusedSince = time.Now()
			}
			if time.Since(refusedSince) >= relay.StartupGrace {
				return fmt.Errorf("database refuses the relay (check database_url): %w", err)
			}
		default:
			refusedSince = time.Time{}
		}
		delay := wait.Full(attempt)
		gate.set("waiting for the database: " + readyReason(err))
		// The same error at most once per reconnect_max: a database down
		// for an hour is a few hundred lines, not one per attempt.
		if msg := err.Error(); msg != logged || time.Since(loggedAt) >= cfg.ReconnectMax {
			log.Warn("database not ready at start", "err", err, "retry_in", delay)
			logged, loggedAt = msg, time.Now()
		}
		if !backoff.Sleep(ctx.Done(), delay) {
			return nil
		}
	}
}

// startCheckTimeout bounds one start check, so that a database that
// accepts TCP and never answers is retried like one that refuses.
const startCheckTimeout = 10 * time.Second

// setMemoryLimit gives the Go runtime a soft memory limit that follows the
// configuration (unless GOMEMLIMIT is set): each worker holds at most one
// batch of payloads (max_batch_bytes) and pgx's read buffer for its
// largest row, so twice that per worker plus 48 MiB for the rest. Without
// a limit the garbage collector lets the heap grow to twice the live data
// before it runs, and large payloads would double the relay's memory for
// nothing (measured: a peak RSS of 238 MiB with 16 MiB payloads under
// load, against 200 MiB promised). A lower limit already in place (the
// binary's share of its cgroup's, see main.go) stays: the configuration
// never raises the limit past what the container allows.
func setMemoryLimit(e *env, cfg config.Config) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	batch := max(cfg.MaxBatchBytes, 16<<20, int64(cfg.MaxPayloadBytes))
	limit := min(int64(cfg.Workers)*2*batch+48<<20, debug.SetMemoryLimit(-1))
	debug.SetMemoryLimit(limit)
	e.log.Debug("memory limit", "bytes", limit)
}

// readyGauge is outboxrelay_relay_ready: what /readyz answers, as a
// metric, for the not-ready alert (deploy/prometheus/rules.yml). It asks
// on each scrape.
func readyGauge(r *relay.Relay, gate *startGate) prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "outboxrelay", Subsystem: "relay", Name: "ready",
		Help: "1 when the relay is ready (/readyz answers 200): started, database reachable, broker connected."},
		func() float64 {
			if gate.get() != "" {
				return 0
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if r.Ready(ctx) != nil {
				return 0
			}
			return 1
		})
}

func handler(r *relay.Relay, reg *prometheus.Registry, gate *startGate, secrets []string) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, req *http.Request) {
		if reason := gate.get(); reason != "" {
			http.Error(w, "not ready: starting: "+redact.Scrub(reason, secrets), http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(req.Context(), 2*time.Second)
		defer cancel()
		if err := r.Ready(ctx); err != nil {
			http.Error(w, "not ready: "+redact.Scrub(readyReason(err), secrets), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// readyReason is what /readyz says about err. The relay's own reasons
// (read-only, no broker, the broker's refusal explained) are said as they
// are; a database error only by its class and SQLSTATE, never its raw
// text, which names the user, the database and the hosts. The relay's log
// has the whole error.
func readyReason(err error) string {
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, relay.ErrReadOnly), errors.Is(err, relay.ErrBrokerRefused),
		errors.Is(err, relay.ErrBrokerUnavailable), errors.Is(err, migrations.ErrNotMigrated):
		return err.Error()
	case errors.As(err, &pgErr):
		kind := "the database refuses the relay"
		if errors.Is(err, relay.ErrPermanent) {
			kind = "a permanent database error"
		}
		return fmt.Sprintf("%s (SQLSTATE %s; the log says why)", kind, pgErr.Code)
	case errors.Is(err, relay.ErrPermanent):
		return "a permanent database error (the log says why)"
	case errors.Is(err, context.DeadlineExceeded):
		return "the database did not answer in time"
	}
	return "the database is unreachable (the log says why)"
}

// relayConfig maps the configuration onto the relay's.
func relayConfig(cfg config.Config, e *env, reg prometheus.Registerer, tp trace.TracerProvider) relay.Config {
	return relay.Config{
		AMQPURLs:          cfg.AMQPURLs,
		BatchSize:         cfg.BatchSize,
		Workers:           cfg.Workers,
		PollInterval:      cfg.PollInterval,
		ConfirmTimeout:    cfg.ConfirmTimeout,
		MaxAttempts:       cfg.MaxAttempts,
		RetryBase:         cfg.RetryBase,
		RetryMax:          cfg.RetryMax,
		ReconnectMin:      cfg.ReconnectMin,
		ReconnectMax:      cfg.ReconnectMax,
		Heartbeat:         cfg.Heartbeat,
		MaxPayloadBytes:   cfg.MaxPayloadBytes,
		ShutdownTimeout:   cfg.ShutdownTimeout,
		OrderingPolicy:    relay.OrderingPolicy(cfg.OrderingPolicy),
		ParkUnroutable:    cfg.ParkUnroutable,
		StrictOrdering:    cfg.StrictOrdering,
		MaxBatchBytes:     cfg.MaxBatchBytes,
		RescanInterval:    cfg.RescanInterval,
		Retention:         cfg.Retention,
		DeletePublished:   cfg.RetentionNone,
		RetentionInterval: cfg.RetentionInterval,
		RetentionBatch:    cfg.RetentionBatch,
		ListenDatabaseURL: cfg.ListenDatabaseURL,
		StatsInterval:     cfg.StatsInterval,
		Logger:            e.log,
		Registerer:        reg,
		TracerProvider:    tp,
	}
}

// newHTTPServer bounds what a client can hold: a request must arrive in
// 10 s, an answer be taken in 30 s (/metrics is the largest, /readyz
// waits 2 s at most), and an idle keep-alive connection is closed after
// 2 min.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}
}

// serveHTTP serves h on addr until stop, which waits up to 5 s for
// requests in flight.
func serveHTTP(ctx context.Context, e *env, addr string, h http.Handler) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http_addr: %w", err)
	}
	srv := newHTTPServer(h)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			e.log.Error("http server failed", "err", err)
		}
	}()
	e.log.Info("http listening", "addr", ln.Addr().String())
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
}
