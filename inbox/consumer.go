package inbox

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/backoff"
	"github.com/outboxrelay/outboxrelay/internal/redact"
)

// Consumer consumes one queue through the inbox table. Create it with New
// and run it with Run. Several Consumers with the same Name, in one process
// or many, share the queue's work.
type Consumer struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	br      *breaker
	dial    backoff.Policy
	running atomic.Bool

	mu     sync.Mutex
	status string // why not consuming; "" while consuming
}

// New checks cfg and builds a Consumer. It does no I/O.
func New(cfg Config) (*Consumer, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Consumer{
		cfg:    cfg,
		log:    cfg.Logger.With("consumer", cfg.Name, "queue", cfg.Queue),
		m:      newMetrics(cfg.Registerer, cfg.Name),
		dial:   backoff.Policy{Base: cfg.ReconnectMin, Max: cfg.ReconnectMax},
		status: "not started",
	}
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
	c.log.Info("inbox consumer started", "concurrency", c.cfg.Concurrency, "prefetch", c.cfg.Prefetch)
	failures, next := 0, 0
	for ctx.Err() == nil {
		u := c.cfg.AMQPURLs[next%len(c.cfg.AMQPURLs)]
		c.setStatus("connecting to broker")
		conn, err := amqp.DialConfig(u, amqp.Config{
			Heartbeat:  c.cfg.Heartbeat,
			Locale:     "en_US",
			Dial:       amqp.DefaultDial(10 * time.Second),
			Properties: amqp.Table{"connection_name": c.cfg.ConnectionName},
		})
		if err != nil {
			c.m.dialFailures.Inc()
			delay := c.dial.Full(failures)
			c.log.Warn("broker dial failed", "broker", redact.Host(u), "err", err, "retry_in", delay)
			failures++
			next++
			backoff.Sleep(ctx.Done(), delay)
			continue
		}
		c.log.Info("broker connected", "broker", redact.Host(u))
		consumed, err := c.serve(ctx, conn)
		_ = conn.Close()
		if ctx.Err() != nil {
			break
		}
		c.m.reconnects.Inc()
		if consumed {
			failures = 0
		}
		delay := c.dial.Full(failures)
		c.log.Warn("broker connection lost", "broker", redact.Host(u), "err", err, "retry_in", delay)
		failures++
		next++ // a node that just failed is likely still down: try the next one first
		backoff.Sleep(ctx.Done(), delay)
	}
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
// ends. It reports whether any subscription received messages, which
// resets the reconnect backoff.
func (c *Consumer) serve(ctx context.Context, conn *amqp.Connection) (bool, error) {
	// Buffered, and read until closed below: the client must never block
	// on a notification we stopped listening to.
	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))
	consumed, failures := false, 0
	for {
		if err := c.cooldown(ctx, connClosed); err != nil {
			return consumed, err
		}
		ok, err := c.subscribe(ctx, conn, connClosed)
		consumed = consumed || ok
		switch {
		case ctx.Err() != nil:
			return consumed, nil
		case conn.IsClosed() || errors.Is(err, errConnectionLost):
			return consumed, err
		case errors.Is(err, errPaused):
			failures = 0
			continue
		}
		if ok {
			failures = 0
		}
		// The channel closed or the broker cancelled the consumer (queue
		// deleted, leader moved): subscribe again on this connection.
		delay := c.dial.Full(failures)
		failures++
		c.log.Warn("subscription ended", "err", err, "retry_in", delay)
		c.setStatus("resubscribing")
		select {
		case <-ctx.Done():
			return consumed, nil
		case e := <-connClosed:
			return consumed, connErr(e)
		case <-time.After(delay):
		}
	}
}

// cooldown waits while the breaker is open, then lets it go half-open.
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
	errPaused         = errors.New("inbox: paused by the circuit breaker")
	errCancelled      = errors.New("inbox: consumer cancelled by the broker")
)

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
