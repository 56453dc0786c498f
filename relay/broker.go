package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/backoff"
	"github.com/outboxrelay/outboxrelay/internal/redact"
)

// ErrBrokerUnavailable is returned while no broker connection is open.
var ErrBrokerUnavailable = errors.New("relay: broker unavailable")

// broker owns the AMQP connection: it dials the failover list in turn with
// backoff, watches for close and connection.blocked, and hands out confirm
// channels to workers. We own the reconnect loop rather than relying on the
// client's experimental recovery, so state changes stay observable.
type broker struct {
	urls      []string
	heartbeat time.Duration
	backoff   backoff.Policy
	name      string
	log       *slog.Logger
	m         *metrics

	mu         sync.Mutex
	conn       *amqp.Connection
	blocked    bool
	changed    chan struct{} // closed and replaced on every state change
	exchanges  map[string]time.Time
	lastDialed int
	lastClose  closeReason
}

// closeReason is why the last connection ended.
type closeReason struct {
	text string
	// outage is true when the broker went away for reasons of its own (a
	// shutdown or an operator closing connections: CONNECTION_FORCED), so
	// no row in flight is to blame.
	outage bool
}

const exchangeCacheTTL = 30 * time.Second

func newBroker(urls []string, heartbeat time.Duration, bo backoff.Policy, name string, log *slog.Logger, m *metrics) *broker {
	return &broker{
		urls:      urls,
		heartbeat: heartbeat,
		backoff:   bo,
		name:      name,
		log:       log,
		m:         m,
		changed:   make(chan struct{}),
		exchanges: map[string]time.Time{},
	}
}

// run keeps a connection open until ctx ends, then closes it.
func (b *broker) run(ctx context.Context) error {
	failures := 0
	next := 0
	for ctx.Err() == nil {
		u := b.urls[next%len(b.urls)]
		conn, err := dial(ctx, u, amqp.Config{
			Heartbeat:  b.heartbeat,
			Locale:     "en_US",
			Properties: amqp.Table{"connection_name": b.name},
		})
		if err != nil {
			b.m.brokerDialFailures.Inc()
			delay := b.backoff.Full(failures)
			b.log.Warn("broker dial failed", "broker", redact.Host(u), "err", err, "retry_in", delay)
			failures++
			next++
			if !backoff.Sleep(ctx.Done(), delay) {
				break
			}
			continue
		}
		failures = 0
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
		b.setConn(conn, next%len(b.urls))
		b.log.Info("broker connected", "broker", redact.Host(u))
		if err := b.watch(ctx, conn, closed, blocked); err != nil {
			b.log.Warn("broker connection lost", "broker", redact.Host(u), "err", err)
			b.m.brokerReconnects.Inc()
			next++ // a node that just failed is likely still down: try the next one first
		}
	}
	return nil
}

// watch blocks until the connection closes or ctx ends.
func (b *broker) watch(ctx context.Context, conn *amqp.Connection, closed chan *amqp.Error, blocked chan amqp.Blocking) error {
	defer b.setConn(nil, 0)
	var blockedSince time.Time
	defer func() {
		if !blockedSince.IsZero() {
			b.m.brokerBlockedSeconds.Add(time.Since(blockedSince).Seconds())
		}
	}()
	for {
		select {
		case <-ctx.Done():
			_ = conn.Close()
			return nil
		case e, ok := <-closed:
			if !ok || e == nil {
				b.setClose(closeReason{text: "connection closed"})
				return errors.New("connection closed")
			}
			b.setClose(closeReason{text: e.Error(), outage: e.Code == amqp.ConnectionForced})
			return e
		case bl, ok := <-blocked:
			if !ok {
				continue
			}
			b.setBlocked(bl.Active)
			if bl.Active {
				blockedSince = time.Now()
				b.log.Warn("broker blocked publishing", "reason", bl.Reason)
			} else if !blockedSince.IsZero() {
				b.m.brokerBlockedSeconds.Add(time.Since(blockedSince).Seconds())
				blockedSince = time.Time{}
				b.log.Info("broker unblocked publishing")
			}
		}
	}
}

func (b *broker) setConn(c *amqp.Connection, idx int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.conn = c
	b.blocked = false
	b.lastDialed = idx
	b.m.brokerConnected.Set(boolFloat(c != nil))
	b.m.brokerBlocked.Set(0)
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *broker) setBlocked(v bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.blocked = v
	b.m.brokerBlocked.Set(boolFloat(v))
	close(b.changed)
	b.changed = make(chan struct{})
}

// connected reports whether a connection is open (blocked or not).
func (b *broker) connected() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conn != nil && !b.conn.IsClosed()
}

// ready waits until a connection is open and not blocked, and returns it.
func (b *broker) ready(ctx context.Context) (*amqp.Connection, error) {
	for {
		b.mu.Lock()
		c, blocked, changed := b.conn, b.blocked, b.changed
		b.mu.Unlock()
		if c != nil && !c.IsClosed() && !blocked {
			return c, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// current returns the open connection, or ErrBrokerUnavailable at once.
// Code that holds a database transaction uses it instead of ready: a
// transaction must never wait for the broker.
func (b *broker) current() (*amqp.Connection, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn == nil || b.conn.IsClosed() {
		return nil, ErrBrokerUnavailable
	}
	return b.conn, nil
}

// channel opens a confirm-mode channel on the current connection, without
// waiting for one.
func (b *broker) channel() (*amqp.Channel, error) {
	c, err := b.current()
	if err != nil {
		return nil, err
	}
	ch, err := c.Channel()
	if err == nil {
		if err = ch.Confirm(false); err == nil {
			return ch, nil
		}
		_ = ch.Close()
	}
	return nil, fmt.Errorf("relay: open channel: %w", err)
}

// frameMax is the negotiated frame_max of the current connection, or 0
// (meaning the protocol default) when there is none.
func (b *broker) frameMax() int {
	c, err := b.current()
	if err != nil {
		return 0
	}
	return c.Config.FrameSize
}

func (b *broker) setClose(r closeReason) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lastClose = r
}

// lastCloseReason says why the last connection closed. The worker asks
// after it saw its channel die with the connection; the watcher records
// the reason when the close notification arrives, which can be a moment
// later, so wait briefly for it.
func (b *broker) lastCloseReason() closeReason {
	for deadline := time.Now().Add(time.Second); ; {
		b.mu.Lock()
		r, conn := b.lastClose, b.conn
		b.mu.Unlock()
		if conn == nil || time.Now().After(deadline) {
			if r.text == "" {
				r.text = "connection closed"
			}
			return r
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// exchangeExists checks with a passive declare on a throwaway channel, so
// that a missing exchange fails its rows with a clear error instead of
// closing the publishing channel under the whole batch. Positive answers
// are cached briefly.
func (b *broker) exchangeExists(ctx context.Context, name string) (bool, error) {
	if name == "" {
		return true, nil
	}
	b.mu.Lock()
	seen, ok := b.exchanges[name]
	b.mu.Unlock()
	if ok && time.Since(seen) < exchangeCacheTTL {
		return true, nil
	}
	c, err := b.current()
	if err != nil {
		return false, err
	}
	ch, err := c.Channel()
	if err != nil {
		return false, fmt.Errorf("relay: open channel: %w", err)
	}
	err = ch.ExchangeDeclarePassive(name, "direct", true, false, false, false, nil)
	var aerr *amqp.Error
	if errors.As(err, &aerr) && aerr.Code == amqp.NotFound {
		return false, nil
	}
	_ = ch.Close()
	if err != nil {
		return false, fmt.Errorf("relay: check exchange: %w", err)
	}
	b.mu.Lock()
	b.exchanges[name] = time.Now()
	b.mu.Unlock()
	return true, nil
}

func boolFloat(v bool) float64 {
	if v {
		return 1
	}
	return 0
}

// dial connects to url like amqp.DialConfig, but gives up when ctx ends,
// also during the AMQP handshake (a peer that accepts TCP and never speaks
// would otherwise hold the dial for its whole timeout).
func dial(ctx context.Context, url string, cfg amqp.Config) (*amqp.Connection, error) {
	const handshakeTimeout = 10 * time.Second
	var stop func() bool
	cfg.Dial = func(network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: handshakeTimeout}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if err := c.SetDeadline(time.Now().Add(handshakeTimeout)); err != nil {
			_ = c.Close()
			return nil, err
		}
		stop = context.AfterFunc(ctx, func() { _ = c.Close() })
		return c, nil
	}
	conn, err := amqp.DialConfig(url, cfg)
	if stop != nil {
		stop()
	}
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return conn, err
}
