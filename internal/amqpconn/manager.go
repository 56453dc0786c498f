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
	// the end of Run), with a *DialError; Refused says whether retrying
	// can help.
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
	writes    *Writes // conn's socket
	blocked   bool
	changed   chan struct{} // closed and replaced on every state change
	lastClose CloseReason
	streak    int // failures since a connection last proved itself
	// at is the index in URLs of the open connection; left marks the
	// URLs whose node the owner abandoned for making no progress (see
	// Abandon), skipped until every other node failed too; abandoned says
	// the open connection is being closed by Abandon.
	at        int
	left      []bool
	abandoned bool
}

// New builds a Manager; it does no I/O until Run.
func New(cfg Config) *Manager {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{cfg: cfg, log: log, changed: make(chan struct{}), left: make([]bool, len(cfg.URLs))}
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
	next, misses := 0, 0
	for ctx.Err() == nil {
		i := m.pick(next, misses)
		u := m.cfg.URLs[i]
		next = i + 1 // whatever happens to u, the next attempt tries another node first
		conn, writes, err := DialWrites(ctx, u, amqp.Config{
			Heartbeat:  m.cfg.Heartbeat,
			Locale:     "en_US",
			Properties: amqp.Table{"connection_name": m.cfg.Name},
		})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			misses++
			if h := m.cfg.Hooks.DialFailed; h != nil {
				h(&DialError{Broker: redact.Host(u), Err: err})
			}
			delay := m.fail()
			m.log.Warn("broker dial failed", "broker", redact.Host(u), "err", m.scrub(err.Error()), "retry_in", delay)
			if !backoff.Sleep(ctx.Done(), delay) {
				break
			}
			continue
		}
		misses = 0
		if m.cfg.SettleOnConnect {
			m.Settled()
		}
		// Buffered, and read until the connection ends (see watch), as
		// amqp091-go's notification rules ask.
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
		m.setConn(conn, writes, i)
		m.log.Info("broker connected", "broker", redact.Host(u))
		reason, lost := m.watch(ctx, conn, closed, blocked)
		if !lost {
			break
		}
		if h := m.cfg.Hooks.Lost; h != nil {
			h(reason)
		}
		if reason.Abandoned {
			// The node is alive but makes no progress: go to the next one
			// at once, without growing the streak (the next node has not
			// failed).
			m.log.Warn("broker node left: it makes no progress", "broker", redact.Host(u), "err", reason.Text)
			continue
		}
		delay := m.fail()
		m.log.Warn("broker connection lost", "broker", redact.Host(u), "err", reason.Text, "outage", reason.Outage, "retry_in", delay)
		if !backoff.Sleep(ctx.Done(), delay) {
			break
		}
	}
	return nil
}

// pick chooses the URL to dial next: the first from next on that was not
// left (see Abandon). Left nodes come back once every other one failed
// to dial since the last connection (misses), or when all were left: a
// node that made no progress is tried again only when nothing else
// answers, and proves itself by opening.
func (m *Manager) pick(next, misses int) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(m.cfg.URLs)
	open := 0
	for _, l := range m.left {
		if !l {
			open++
		}
	}
	if open == 0 || misses >= open {
		clear(m.left)
	}
	for k := range n {
		if j := (next + k) % n; !m.left[j] {
			return j
		}
	}
	return next % n
}

// Abandon closes c, if it is still the open connection and another URL
// is listed, because its node makes no progress (confirms stopped coming
// while the connection lives: a node cut off from its cluster's
// majority). The Manager then dials the next URL at once and comes back
// to this node only when every other one failed (see pick). It reports
// whether it left; with a single URL it does nothing (there is nowhere to
// go), and the owner carries on as after any failed attempt.
func (m *Manager) Abandon(c *amqp.Connection, why string) bool {
	m.mu.Lock()
	if c == nil || m.conn != c || len(m.cfg.URLs) < 2 || m.abandoned {
		m.mu.Unlock()
		return false
	}
	m.left[m.at] = true
	m.abandoned = true
	m.mu.Unlock()
	m.log.Warn("leaving broker node", "broker", redact.Host(m.cfg.URLs[m.at]), "why", why)
	// The node answers (it is alive, only cut off), so a close is quick;
	// the deadline bounds it when it is not.
	go func() { _ = c.CloseDeadline(time.Now().Add(time.Second)) }()
	return true
}

// watch follows conn until it closes (lost) or ctx ends, then forgets it.
func (m *Manager) watch(ctx context.Context, conn *amqp.Connection, closed <-chan *amqp.Error, blocked <-chan amqp.Blocking) (reason CloseReason, lost bool) {
	var blockedSince time.Time
	defer func() {
		m.setConn(nil, nil, 0)
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
			if m.abandoned {
				r = CloseReason{Text: "left: the node made no progress", Abandoned: true}
			}
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

func (m *Manager) setConn(c *amqp.Connection, w *Writes, at int) {
	m.mu.Lock()
	m.conn, m.writes, m.at, m.abandoned = c, w, at, false
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

// Writes returns the socket of connection c (see Writes), or nil when c
// is not the manager's connection any more: holding nil does nothing.
func (m *Manager) Writes(c *amqp.Connection) *Writes {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c == nil || c != m.conn {
		return nil
	}
	return m.writes
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
// when nothing better is known). It is set before the Lost hook is called.
func (m *Manager) LastClose() CloseReason {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.lastClose
	if r.Text == "" {
		r.Text = "connection closed"
	}
	return r
}

// scrub masks the URLs' passwords in text that may quote one.
func (m *Manager) scrub(text string) string { return redact.Scrub(text, m.secrets) }
