package amqpconn

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/backoff"
	"github.com/outboxrelay/outboxrelay/internal/redact"
)

// Config is what a Manager needs. URLs is required; the rest may be zero.
type Config struct {
	// URLs is the failover list, tried in turn.
	URLs []string
	// Heartbeat is the AMQP heartbeat; zero leaves amqp091-go's default.
	Heartbeat time.Duration
	// Name is the connection_name shown in the management UI.
	Name string
	// Backoff shapes the delay before the next dial after a failed dial
	// or a lost connection.
	Backoff backoff.Policy
	// SettleOnConnect: a connection proves itself by opening, which ends
	// the failure streak (see Settled).
	SettleOnConnect bool
	// Logger receives the connection's story; nil discards it.
	Logger *slog.Logger
	// Hooks report state changes, for the owner's metrics.
	Hooks Hooks
}

// Hooks are called from the Manager's Run goroutine, one at a time; they
// must not block. Any may be nil.
type Hooks struct {
	// Connected is called with true when a connection opened, and with
	// false when it is gone (lost or closed at the end of Run).
	Connected func(up bool)
	// Blocked is called with true when the broker blocks publishing
	// (connection.blocked: a memory or disk alarm), and with false and
	// the time spent blocked when it unblocks or the connection ends
	// blocked.
	Blocked func(blocked bool, spent time.Duration)
	// DialFailed is called after each failed dial (not one cut short by
	// the end of Run).
	DialFailed func(err error)
	// Lost is called when an open connection ended other than by the end
	// of Run.
	Lost func(CloseReason)
}

// Manager keeps one broker connection open: it dials the failover list in
// turn with backoff, follows close and connection.blocked, and hands the
// connection out without owning what its users open on it.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	secrets []string

	mu        sync.Mutex
	conn      *amqp.Connection
	blocked   bool
	changed   chan struct{} // closed and replaced on every state change
	lastClose CloseReason
	streak    int // failures since a connection last proved itself
}

// New builds a Manager; it does no I/O until Run.
func New(cfg Config) *Manager {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{cfg: cfg, log: log, changed: make(chan struct{})}
	for _, u := range cfg.URLs {
		m.secrets = append(m.secrets, redact.Secrets(u)...)
	}
	return m
}

// Run keeps a connection open until ctx ends, then closes it and returns
// nil. It never gives up on its own: a broker that cannot be reached is
// retried with backoff.
func (m *Manager) Run(ctx context.Context) error {
	if len(m.cfg.URLs) == 0 {
		return errors.New("amqpconn: no broker URL")
	}
	next := 0
	for ctx.Err() == nil {
		u := m.cfg.URLs[next%len(m.cfg.URLs)]
		next++ // whatever happens to u, the next attempt tries another node first
		conn, err := Dial(ctx, u, amqp.Config{
			Heartbeat:  m.cfg.Heartbeat,
			Locale:     "en_US",
			Properties: amqp.Table{"connection_name": m.cfg.Name},
		})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if h := m.cfg.Hooks.DialFailed; h != nil {
				h(err)
			}
			delay := m.fail()
			m.log.Warn("broker dial failed", "broker", redact.Host(u), "err", m.scrub(err.Error()), "retry_in", delay)
			if !backoff.Sleep(ctx.Done(), delay) {
				break
			}
			continue
		}
		if m.cfg.SettleOnConnect {
			m.Settled()
		}
		// Buffered, and read until the connection ends (see watch), as
		// amqp091-go's notification rules ask.
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
		m.setConn(conn)
		m.log.Info("broker connected", "broker", redact.Host(u))
		reason, lost := m.watch(ctx, conn, closed, blocked)
		if !lost {
			break
		}
		if h := m.cfg.Hooks.Lost; h != nil {
			h(reason)
		}
		delay := m.fail()
		m.log.Warn("broker connection lost", "broker", redact.Host(u), "err", reason.Text, "outage", reason.Outage, "retry_in", delay)
		if !backoff.Sleep(ctx.Done(), delay) {
			break
		}
	}
	return nil
}

// watch follows conn until it closes (lost) or ctx ends, then forgets it.
func (m *Manager) watch(ctx context.Context, conn *amqp.Connection, closed <-chan *amqp.Error, blocked <-chan amqp.Blocking) (reason CloseReason, lost bool) {
	var blockedSince time.Time
	defer func() {
		m.setConn(nil)
		if !blockedSince.IsZero() {
			m.hookBlocked(false, time.Since(blockedSince))
		}
	}()
	for {
		select {
		case <-ctx.Done():
			_ = conn.Close()
			return CloseReason{}, false
		case e, ok := <-closed:
			r := CloseReason{Text: "connection closed"}
			if ok && e != nil {
				r = CloseReason{Text: m.scrub(e.Error()), Outage: Outage(e)}
			}
			m.mu.Lock()
			m.lastClose = r
			m.mu.Unlock()
			return r, true
		case bl, ok := <-blocked:
			if !ok {
				blocked = nil // the connection is closing: its close notification follows
				continue
			}
			m.setBlocked(bl.Active)
			switch {
			case bl.Active && blockedSince.IsZero():
				blockedSince = time.Now()
				m.hookBlocked(true, 0)
				m.log.Warn("broker blocked publishing", "reason", bl.Reason)
			case !bl.Active && !blockedSince.IsZero():
				m.hookBlocked(false, time.Since(blockedSince))
				blockedSince = time.Time{}
				m.log.Info("broker unblocked publishing")
			}
		}
	}
}

func (m *Manager) hookBlocked(on bool, spent time.Duration) {
	if h := m.cfg.Hooks.Blocked; h != nil {
		h(on, spent)
	}
}

// fail counts a failure and returns the delay before the next dial.
func (m *Manager) fail() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.cfg.Backoff.Full(m.streak)
	m.streak++
	return d
}

// Settled says the current connection proved itself (a consumer received
// a message on it): the failure streak ends, and the delays after the next
// failure start from Backoff.Base again.
func (m *Manager) Settled() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.streak = 0
}

func (m *Manager) setConn(c *amqp.Connection) {
	m.mu.Lock()
	m.conn = c
	m.blocked = false
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
	if h := m.cfg.Hooks.Connected; h != nil {
		h(c != nil)
	}
}

func (m *Manager) setBlocked(v bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.blocked = v
	close(m.changed)
	m.changed = make(chan struct{})
}

// Current returns the open connection, or nil at once when there is none.
// Code that must never wait for the broker (a relay batch holding a
// database transaction) uses it instead of Ready.
func (m *Manager) Current() *amqp.Connection {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conn == nil || m.conn.IsClosed() {
		return nil
	}
	return m.conn
}

// Connected reports whether a connection is open, blocked or not.
func (m *Manager) Connected() bool { return m.Current() != nil }

// Blocked reports whether the broker blocks publishing on the open
// connection.
func (m *Manager) Blocked() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.conn != nil && m.blocked
}

// Ready waits until a connection is open and not blocked, and returns it;
// or returns ctx's error.
func (m *Manager) Ready(ctx context.Context) (*amqp.Connection, error) {
	return m.wait(ctx, true)
}

// Wait waits until a connection is open, blocked or not, and returns it;
// or returns ctx's error. A connection that closed is never returned, so
// a caller whose connection died can call Wait again for the next one.
func (m *Manager) Wait(ctx context.Context) (*amqp.Connection, error) {
	return m.wait(ctx, false)
}

func (m *Manager) wait(ctx context.Context, unblocked bool) (*amqp.Connection, error) {
	for {
		m.mu.Lock()
		c, blocked, changed := m.conn, m.blocked, m.changed
		m.mu.Unlock()
		if c != nil && !c.IsClosed() && !(unblocked && blocked) {
			return c, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// LastClose says why the last connection closed ("connection closed"
// when nothing better is known). A user that saw its channel die with the connection asks right
// away; the close notification reaches the watcher a moment later, so
// LastClose waits for it briefly (up to a second) while the connection is
// still the current one.
func (m *Manager) LastClose() CloseReason {
	for deadline := time.Now().Add(time.Second); ; {
		m.mu.Lock()
		r, conn := m.lastClose, m.conn
		m.mu.Unlock()
		if conn == nil || time.Now().After(deadline) {
			if r.Text == "" {
				r.Text = "connection closed"
			}
			return r
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// scrub masks the URLs' passwords in text that may quote one.
func (m *Manager) scrub(text string) string { return redact.Scrub(text, m.secrets) }
