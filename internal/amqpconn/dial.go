package amqpconn

import (
	"context"
	"errors"
	"net"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// handshakeTimeout bounds the TCP connect and the AMQP handshake when the
// context does not end first.
const handshakeTimeout = 10 * time.Second

// Dial connects to url like amqp.DialConfig, but gives up when ctx ends,
// also during the AMQP handshake: amqp.DefaultDial would hold a peer that
// accepts TCP and never speaks for its whole timeout. cfg.Dial is
// replaced.
func Dial(ctx context.Context, url string, cfg amqp.Config) (*amqp.Connection, error) {
	conn, _, err := DialWrites(ctx, url, cfg)
	return conn, err
}

// DialWrites is Dial, and also returns the connection's socket as a
// Writes, which a publisher holds to coalesce a segment's writes.
func DialWrites(ctx context.Context, url string, cfg amqp.Config) (*amqp.Connection, *Writes, error) {
	var stop func() bool
	var writes *Writes
	cfg.Dial = func(network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: handshakeTimeout}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		// amqp.DialConfig clears the deadline once the handshake is done.
		if err := c.SetDeadline(time.Now().Add(handshakeTimeout)); err != nil {
			_ = c.Close()
			return nil, err
		}
		// Closing the socket is the only way to interrupt the handshake's
		// reads; stop() below disarms it once DialConfig returned.
		stop = context.AfterFunc(ctx, func() { _ = c.Close() })
		writes = &Writes{Conn: c}
		return writes, nil
	}
	conn, err := amqp.DialConfig(url, cfg)
	if stop != nil && !stop() && err == nil {
		// ctx ended just as the handshake finished: the socket is closed
		// or about to be, so the connection is no use.
		_ = conn.Close()
		return nil, nil, ctx.Err()
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, err
	}
	return conn, writes, nil
}

// Outage reports whether err is the broker closing a connection on purpose
// (CONNECTION_FORCED: a node shutting down, an operator closing
// connections), which blames nothing that was in flight on it.
func Outage(err error) bool {
	var ae *amqp.Error
	return errors.As(err, &ae) && ae.Server && ae.Code == amqp.ConnectionForced
}

// CloseReason is why a connection ended.
type CloseReason struct {
	// Text is the broker's or the client's reason, with the URLs'
	// passwords scrubbed.
	Text string
	// Outage is true when the broker went away for reasons of its own
	// (see Outage), so no message in flight is to blame.
	Outage bool
	// Abandoned is true when the owner left a live node that made no
	// progress (Manager.Abandon): no message in flight is to blame either.
	Abandoned bool
}
