package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"

	"github.com/outboxrelay/outboxrelay/internal/backoff"
)

// listenIdleCheck is how long the LISTEN connection may stay silent before
// the listener pings the server, and listenPingTimeout how long the ping
// may take. A server that vanished without closing the connection (its
// host died, a partition swallows the packets, a failover moved the
// address) is then noticed within their sum, and the listener reconnects,
// to the promoted standby if the URL names it. Variables for tests.
var (
	listenIdleCheck   = 15 * time.Second
	listenPingTimeout = 5 * time.Second
)

// listen keeps a dedicated connection LISTENing on "<schema>.outbox" and
// wakes a worker on each notification. After any failure it reconnects with
// backoff and wakes a worker at once, since rows may have been committed
// while nobody listened.
func (r *Relay) listen(ctx context.Context) {
	bo := backoff.Policy{Base: r.cfg.ReconnectMin, Max: r.cfg.ReconnectMax}
	failures := 0
	for ctx.Err() == nil {
		err := r.listenOnce(ctx, func() { failures = 0 })
		r.m.listenerConnected.Set(0)
		if ctx.Err() != nil {
			return
		}
		delay := bo.Full(failures)
		failures++
		level := slog.LevelWarn
		if !Transient(err) {
			level = slog.LevelError // neither the server going away nor a failover
		}
		r.log.Log(ctx, level, "notification listener lost", "err", err, "retry_in", delay)
		if !backoff.Sleep(ctx.Done(), delay) {
			return
		}
	}
}

func (r *Relay) listenOnce(ctx context.Context, connected func()) error {
	cfg := r.pool.Config().ConnConfig.Copy()
	if r.cfg.ListenDatabaseURL != "" {
		var err error
		if cfg, err = pgx.ParseConfig(r.cfg.ListenDatabaseURL); err != nil {
			return fmt.Errorf("listen url: %w", err)
		}
		ConnDefaults(&cfg.Config)
	}
	// The wait below ends every listenIdleCheck: let that only expire a
	// deadline, not send the server a cancel request (pgx's default) for
	// a connection that runs nothing.
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: pc.Conn()}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// The channel is named after the schema the relay claims from: the
	// pool's (its search_path may be set by the caller, e.g. the `schema`
	// setting), not the listen connection's, which listen_database_url
	// may leave elsewhere.
	var schema string
	if err := r.pool.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		return fmt.Errorf("read schema: %w", err)
	}
	channel := schema + ".outbox"
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	r.m.listenerConnected.Set(1)
	connected()
	pc := conn.PgConn()
	// Info: after a failover, the line that says which server the relay
	// follows now.
	r.log.Info("listening for inserts", "channel", channel, "server", pc.Conn().RemoteAddr().String())
	r.signal()
	for {
		wctx, cancel := context.WithTimeout(ctx, listenIdleCheck)
		_, err := conn.WaitForNotification(wctx)
		cancel()
		if err == nil {
			r.signal()
			continue
		}
		if ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		// Silent for listenIdleCheck: is anyone still there?
		pctx, cancel := context.WithTimeout(ctx, listenPingTimeout)
		err = conn.Ping(pctx)
		cancel()
		if err != nil {
			return fmt.Errorf("silent for %s, then no answer to a ping: %w", listenIdleCheck, err)
		}
	}
}
