package relay

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/internal/backoff"
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
		r.log.Warn("notification listener lost", "err", err, "retry_in", delay)
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
	r.log.Debug("listening for inserts", "channel", channel)
	r.signal()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		r.signal()
	}
}
