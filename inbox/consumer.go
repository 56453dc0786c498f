package inbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/amqpconn"
	"github.com/outboxrelay/outboxrelay/internal/backoff"
	"github.com/outboxrelay/outboxrelay/internal/tracing"
)

// Consumer consumes one queue through the inbox table. Create it with New
// and run it with Run. Several Consumers with the same Name, in one process
// or many, share the queue's work.
type Consumer struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	tracer  tracing.Tracer
	br      *breaker
	conn    *amqpconn.Manager
	resub   backoff.Policy // delays between subscriptions on one connection
	running atomic.Bool

	insertSQL, pruneSQL string // insertInbox and pruneInbox on Config.Schema's table

	mu     sync.Mutex
	status string // why not consuming; "" while consuming

	// isolated: consume with prefetch 1 (see Config.IsolationPeriod). Only
	// Run's goroutine touches it.
	isolated bool
}

// New checks cfg and builds a Consumer. It does no I/O. Its errors and the
// consumer's logs never show a password from Config.AMQPURLs.
func New(cfg Config) (*Consumer, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	reconnect := backoff.Policy{Base: cfg.ReconnectMin, Max: cfg.ReconnectMax}
	c := &Consumer{
		cfg:    cfg,
		log:    cfg.Logger.With("consumer", cfg.Name, "queue", cfg.Queue),
		m:      newMetrics(cfg.Registerer, cfg.Name),
		tracer: tracing.New("github.com/outboxrelay/outboxrelay/inbox", cfg.TracerProvider, cfg.Propagator),
		resub:  reconnect,
		status: "not started",
	}
	table := "inbox"
	if cfg.Schema != "" {
		table = pgx.Identifier{cfg.Schema, "inbox"}.Sanitize()
	}
	c.insertSQL, c.pruneSQL = fmt.Sprintf(insertInbox, table), fmt.Sprintf(pruneInbox, table)
	// A connection proves itself when a message arrives on it (Settled in
	// subscribe), not when it opens: a delivery that breaks every
	// connection before one arrives makes the reconnect delays grow.
	c.conn = amqpconn.New(amqpconn.Config{
		URLs:      cfg.AMQPURLs,
		Heartbeat: cfg.Heartbeat,
		Name:      cfg.ConnectionName,
		Backoff:   reconnect,
		Logger:    c.log,
		Hooks: amqpconn.Hooks{
			DialFailed: func(error) { c.m.dialFailures.Inc() },
			Lost:       func(amqpconn.CloseReason) { c.m.reconnects.Inc() },
		},
	})
	c.br = newBreaker(cfg.BreakerThreshold, c.breakerChanged)
	return c, nil
}

// Run consumes until ctx ends and returns nil then. Messages in flight when
// ctx ends are rolled back and left unacked: the broker redelivers them.
// Run reconnects by itself and returns an error only if called twice.
func (c *Consumer) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("inbox: Run called twice")
	}
	var wg sync.WaitGroup
	if c.cfg.RetentionWindow > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.retain(ctx)
		}()
	}
	// The connection outlives ctx until serve returned, so that messages
	// in flight are rolled back before it closes under them.
	connCtx, closeConn := context.WithCancel(context.WithoutCancel(ctx))
	defer closeConn()
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = c.conn.Run(connCtx)
	}()
	c.log.Info("inbox consumer started", "concurrency", c.cfg.Concurrency, "prefetch", c.cfg.Prefetch)
	for ctx.Err() == nil {
		c.setStatus("connecting to broker")
		conn, err := c.conn.Wait(ctx)
		if err != nil {
			break
		}
		// serve returns when conn is lost or ctx ends; the manager dials
		// the next node meanwhile, with backoff.
		err = c.serve(ctx, conn)
		if ctx.Err() == nil && suspectLoss(err) && c.cfg.IsolationPeriod > 0 && c.cfg.Prefetch > 1 {
			c.setIsolated(true)
		}
	}
	closeConn()
	c.setStatus("stopped")
	wg.Wait()
	c.log.Info("inbox consumer stopped")
	return nil
}

// Ready returns nil while the consumer is subscribed and receiving, and an
// error wrapping ErrNotConsuming that says why otherwise.
func (c *Consumer) Ready() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.status == "" {
		return nil
	}
	return &notConsuming{reason: c.status}
}

type notConsuming struct{ reason string }

func (e *notConsuming) Error() string { return ErrNotConsuming.Error() + ": " + e.reason }
func (e *notConsuming) Unwrap() error { return ErrNotConsuming }

func (c *Consumer) setStatus(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status = s
	c.m.consuming.Set(boolFloat(s == ""))
}

func (c *Consumer) event(e Event) {
	if c.cfg.OnEvent != nil {
		c.cfg.OnEvent(e)
	}
}

func (c *Consumer) breakerChanged(s BreakerState) {
	c.m.breakerState.Set(float64(s))
	switch s {
	case BreakerOpen:
		c.m.breakerOpens.Inc()
		c.log.Warn("circuit breaker open: pausing consumption", "cooldown", c.cfg.BreakerCooldown)
	case BreakerHalfOpen:
		c.log.Info("circuit breaker half-open: trying one message")
	case BreakerClosed:
		c.log.Info("circuit breaker closed: consuming")
	}
	c.event(Event{Kind: EventBreaker, Breaker: s})
}

// serve runs subscriptions on conn until the connection is lost or ctx
// ends, and returns why.
func (c *Consumer) serve(ctx context.Context, conn *amqp.Connection) error {
	// Buffered, and read until closed below: the client must never block
	// on a notification we stopped listening to.
	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))
	failures := 0
	for {
		if err := c.cooldown(ctx, connClosed); err != nil {
			return err
		}
		ok, live, err := c.subscribe(ctx, conn)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, errNoProgress):
			// Left on purpose (the Manager closes conn and dials the next
			// node): no sign of a delivery breaking the connection, so no
			// isolation. Wait for the close, or Wait would hand conn back.
			select {
			case <-ctx.Done():
			case <-connClosed:
			}
			return err
		case conn.IsClosed() || errors.Is(err, errConnectionLost):
			// subscribe may have seen the channel close (or its deliveries
			// end) before the connection's notification, which then says
			// why.
			if !errors.Is(err, errConnectionLost) {
				select {
				case e := <-connClosed:
					err = errors.Join(connErr(e), err)
				default:
				}
			}
			if live {
				// Perhaps a delivery the client could not read (see Run).
				err = errors.Join(errLostConsuming, err)
			}
			return err
		case errors.Is(err, errWiden):
			failures = 0
			continue
		}
		if ok {
			failures = 0
		}
		// The channel closed or the broker cancelled the consumer (queue
		// deleted, leader moved): subscribe again on this connection.
		delay := c.resub.Full(failures)
		failures++
		c.log.Warn("subscription ended", "err", err, "retry_in", delay)
		c.setStatus("resubscribing")
		select {
		case <-ctx.Done():
			return nil
		case e := <-connClosed:
			return connErr(e)
		case <-time.After(delay):
		}
	}
}

// cooldown waits while the breaker is open, then lets it go half-open. It
// covers a breaker that opened under a subscription since lost; a live
// subscription waits out the pause in place (see subscribe).
func (c *Consumer) cooldown(ctx context.Context, connClosed <-chan *amqp.Error) error {
	if st, _ := c.br.snapshot(); st != BreakerOpen {
		return nil
	}
	c.setStatus("paused by the circuit breaker")
	wait := time.Until(c.br.reopenAt().Add(c.cfg.BreakerCooldown))
	t := time.NewTimer(max(wait, 0))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case e := <-connClosed:
		// The pause goes on after reconnecting: openedAt is kept.
		return connErr(e)
	case <-t.C:
	}
	c.br.halfOpen()
	return nil
}

var (
	errConnectionLost = errors.New("inbox: connection lost")
	errLostConsuming  = errors.New("inbox: connection lost while consuming")
	errWiden          = errors.New("inbox: isolation over: subscribing with the normal prefetch")
	errCancelled      = errors.New("inbox: consumer cancelled by the broker")
)

// suspectLoss reports whether a lost connection may have been caused by a
// delivery: it died under a live subscription, and not because the broker
// closed it on purpose (CONNECTION_FORCED: shutdown, an operator). A
// delivery the client cannot read ends the connection with a client-side
// FRAME_ERROR, which a network failure also gives; the two cannot be told
// apart, so both isolate, which costs only throughput for a while.
func suspectLoss(err error) bool {
	return errors.Is(err, errLostConsuming) && !amqpconn.Outage(err)
}

// setIsolated switches isolation (prefetch 1) on or off; see
// Config.IsolationPeriod.
func (c *Consumer) setIsolated(on bool) {
	if on == c.isolated {
		return
	}
	c.isolated = on
	c.m.isolated.Set(boolFloat(on))
	if on {
		c.m.isolations.Inc()
		c.log.Warn("connection lost while consuming: taking messages one at a time, so that a delivery breaking the connection is charged alone",
			"period", c.cfg.IsolationPeriod)
		return
	}
	c.log.Info("no connection lost during the isolation period: normal prefetch again", "prefetch", c.cfg.Prefetch)
}

func connErr(e *amqp.Error) error {
	if e == nil {
		return errConnectionLost
	}
	return errors.Join(errConnectionLost, e)
}

func boolFloat(v bool) float64 {
	if v {
		return 1
	}
	return 0
}
