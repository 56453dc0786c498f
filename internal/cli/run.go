package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"

	"github.com/outboxrelay/outboxrelay/config"
	"github.com/outboxrelay/outboxrelay/relay"
)

// runRelay wires the relay and its HTTP endpoints as a run group: each part
// has a run and a stop, and the shutdown order is visible here. The relay
// stops first (finishing in-flight batches), then the HTTP server, then the
// pool.
func runRelay(ctx context.Context, e *env, cfg config.Config, _ *pflag.FlagSet) error {
	poolCfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("database_url: %s", redactErr(err, cfg.DatabaseURL))
	}
	poolCfg.MaxConns = int32(cfg.Workers + 4)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	poolCfg.ConnConfig.Tracer = newRoundTrips(reg)
	pool, err := pgxpool.NewWithConfig(context.WithoutCancel(ctx), poolCfg)
	if err != nil {
		return fmt.Errorf("database pool: %w", err)
	}
	defer pool.Close()

	r, err := relay.New(pool, relay.Config{
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
		OrderingPolicy:    cfg.OrderingPolicy,
		StrictOrdering:    cfg.StrictOrdering,
		MaxBatchBytes:     cfg.MaxBatchBytes,
		RescanInterval:    cfg.RescanInterval,
		Retention:         cfg.Retention,
		RetentionInterval: cfg.RetentionEvery,
		RetentionBatch:    cfg.RetentionBatch,
		ListenURL:         cfg.ListenURL,
		StatsInterval:     cfg.StatsInterval,
		Logger:            e.log,
		Registerer:        reg,
	})
	if err != nil {
		return err
	}

	var srv *http.Server
	if cfg.HTTPAddr != "" {
		ln, err := net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return fmt.Errorf("http_addr: %w", err)
		}
		srv = &http.Server{Handler: handler(r, reg), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				e.log.Error("http server failed", "err", err)
			}
		}()
		e.log.Info("http listening", "addr", ln.Addr().String())
	}

	runErr := r.Run(ctx) // returns after SIGTERM/SIGINT and in-flight batches
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}
	return runErr
}

func handler(r *relay.Relay, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, req *http.Request) {
		ctx, cancel := context.WithTimeout(req.Context(), 2*time.Second)
		defer cancel()
		if err := r.Ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}
