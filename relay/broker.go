package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/amqpconn"
	"github.com/outboxrelay/outboxrelay/internal/backoff"
)

// ErrBrokerUnavailable is returned while no broker connection is open.
var ErrBrokerUnavailable = errors.New("relay: broker unavailable")

// broker is the relay's view of its AMQP connection: the shared connection
// manager (internal/amqpconn: dialling, failover, backoff, blocking, close
// reasons) plus what publishing needs on top, confirm channels for the
// workers and a cache of exchanges known to exist.
type broker struct {
	conn *amqpconn.Manager
	m    *metrics

	mu        sync.Mutex
	exchanges map[string]time.Time
}

const exchangeCacheTTL = 30 * time.Second

// h learns of connections and failed dials, for Ready and for Run's
// early exit when the broker refuses the relay for good.
func newBroker(urls []string, heartbeat time.Duration, bo backoff.Policy, name string, log *slog.Logger, m *metrics, h *health) *broker {
	return &broker{
		m: m,
		conn: amqpconn.New(amqpconn.Config{
			URLs:      urls,
			Heartbeat: heartbeat,
			Name:      name,
			Backoff:   bo,
			// A row that kills connections is charged by the worker (see
			// connectionLost), so a connection that opens has proved
			// itself.
			SettleOnConnect: true,
			Logger:          log,
			Hooks: amqpconn.Hooks{
				Connected: func(up bool) {
					h.noteBrokerConnected(up)
					m.brokerConnected.Set(boolFloat(up))
					m.brokerBlocked.Set(0)
				},
				Blocked: func(on bool, spent time.Duration) {
					m.brokerBlocked.Set(boolFloat(on))
					m.brokerBlockedSeconds.Add(spent.Seconds())
				},
				DialFailed: func(err error) {
					m.brokerDialFailures.Inc()
					h.noteDialFailed(err)
				},
				Lost: func(amqpconn.CloseReason) { m.brokerReconnects.Inc() },
			},
		}),
		exchanges: map[string]time.Time{},
	}
}

// run keeps a connection open until ctx ends, then closes it.
func (b *broker) run(ctx context.Context) error { return b.conn.Run(ctx) }

// connected reports whether a connection is open (blocked or not).
func (b *broker) connected() bool { return b.conn.Connected() }

// ready waits until a connection is open and not blocked, and returns it.
func (b *broker) ready(ctx context.Context) (*amqp.Connection, error) { return b.conn.Ready(ctx) }

// abandon leaves c's node, which makes no progress, for the next URL
// (amqpconn.Manager.Abandon); false when there is no other.
func (b *broker) abandon(c *amqp.Connection, why string) bool {
	if !b.conn.Abandon(c, why) {
		return false
	}
	b.m.abandoned.Inc()
	return true
}

// current returns the open connection, or ErrBrokerUnavailable at once.
// Code that holds a database transaction uses it instead of Ready: a
// transaction must never wait for the broker.
func (b *broker) current() (*amqp.Connection, error) {
	c := b.conn.Current()
	if c == nil {
		return nil, ErrBrokerUnavailable
	}
	return c, nil
}

// channel opens a confirm-mode channel on the current connection, without
// waiting for one, and gives up after timeout.
func (b *broker) channel(timeout time.Duration) (*amqp.Channel, *amqp.Connection, error) {
	c, err := b.current()
	if err != nil {
		return nil, nil, err
	}
	// Opening a channel is a round trip the client cannot cancel; a broker
	// that went silent without closing the TCP connection would hold the
	// batch (and its transaction) until the heartbeat gives up. Past the
	// timeout the connection is dropped instead, and its node left like
	// one that stopped confirming (see abandon): the worker then waits for
	// a new one outside any transaction.
	type opened struct {
		ch  *amqp.Channel
		err error
	}
	done := make(chan opened, 1)
	go func() {
		ch, err := c.Channel()
		if err == nil {
			if err = ch.Confirm(false); err != nil {
				_ = ch.Close()
			}
		}
		done <- opened{ch, err}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case o := <-done:
		if o.err != nil {
			return nil, nil, fmt.Errorf("relay: open channel: %w", o.err)
		}
		return o.ch, c, nil
	case <-t.C:
		if !b.abandon(c, "no answer to channel.open") {
			_ = c.CloseDeadline(time.Now().Add(time.Second))
		}
		return nil, nil, fmt.Errorf("relay: open channel: no answer from the broker within %s; connection dropped", timeout)
	}
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
		// A hard error from the broker closes the connection, and so
		// does the client's refusal to write the name: no need to wait
		// and see.
		if checkBlamesRow(err) {
			return false, fmt.Errorf("%w: %v", errCheckKilledConnection, err)
		}
		return false, fmt.Errorf("relay: check exchange: %w", err)
	}
	b.mu.Lock()
	b.exchanges[name] = time.Now()
	b.mu.Unlock()
	return true, nil
}

// errCheckKilledConnection: the connection died under an exchange check
// (a name amqp091-go cannot encode makes it close the connection), so the
// row whose exchange it was is to suspect.
var errCheckKilledConnection = errors.New("relay: the connection died while checking an exchange")

func boolFloat(v bool) float64 {
	if v {
		return 1
	}
	return 0
}
