package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/amqpconn"
)

// confirmChannel owns one confirm-mode channel, the close notifications of
// the channel and of its connection, and the channel's returns. It
// publishes a segment of messages and says, for each, what became of it.
//
// It decides from notifications alone, never by the clock: amqp091-go
// marks a closing connection closed before it shuts its channels down, and
// a closing channel hands its error to the NotifyClose listeners (or
// closes them) before it resolves the confirms still pending, unacked. So
// when a confirm resolves unacked, a read of the channel's notification
// that never waits tells a nack (the channel is open) from a confirm lost
// with the channel, and the connection's state tells whether the
// connection went too.
type confirmChannel struct {
	ch       *amqp.Channel
	conn     *amqp.Connection
	writes   *amqpconn.Writes // conn's socket: held while a segment is written
	chClosed chan *amqp.Error
	returns  chan amqp.Return
	cause    *closeCause // why the channel closed, once known
}

// closeCause is why a confirm channel closed.
type closeCause struct {
	// err is the broker's or the client's reason; nil after a graceful
	// close (ours, or the connection's).
	err *amqp.Error
	// connection is set when the connection closed with the channel.
	connection bool
	// abandoned is set when the relay itself left the node for making no
	// progress: nothing in flight is to blame.
	abandoned bool
}

// server reports whether the broker closed the channel or its
// connection with a hard (connection-level) error about what it was sent:
// the one cause a row in flight can be blamed for. A broker shutting down
// or an operator (CONNECTION_FORCED) blames no row.
func (c *closeCause) server() bool {
	return c != nil && !c.abandoned && c.err != nil && c.err.Server && !c.err.Recover && c.err.Code != amqp.ConnectionForced
}

// left reports whether the relay itself closed the connection, leaving a
// node that made no progress.
func (c *closeCause) left() bool { return c != nil && c.abandoned }

// channelOnly reports whether the broker closed the channel alone, over
// something one message did (a soft error), the connection staying up.
func (c *closeCause) channelOnly() bool {
	return c != nil && !c.connection && c.err != nil && c.err.Server && c.err.Recover
}

func (c *closeCause) String() string {
	switch {
	case c == nil:
		return "channel open"
	case c.abandoned:
		return "the relay left the node: it made no progress"
	case c.err != nil:
		return c.err.Error()
	}
	return "channel closed"
}

// verdict is what became of one message of a segment.
type verdict int

const (
	vUnsent      verdict = iota // not put on the wire
	vAcked                      // confirmed, not returned
	vReturned                   // confirmed after a basic.return: unroutable
	vNacked                     // the broker nacked it, the channel open
	vLost                       // its confirm was lost: the channel closed first
	vTimedOut                   // no confirm came before the broker went silent
	vUnencodable                // amqp091-go refused to encode it
)

// sent is one message of a segment and what became of it.
type sent struct {
	verdict verdict
	ret     *amqp.Return // for vReturned
}

// outgoing is one message to publish.
type outgoing struct {
	exchange, routingKey string
	msg                  *amqp.Publishing
}

// segmentReport is what a confirmChannel learned from one segment.
type segmentReport struct {
	msgs []sent
	// silent is set when no confirm came for the silence allowed while
	// some were outstanding: the node makes no progress.
	silent bool
	// encodeErr is the client's refusal of a message (vUnencodable): it
	// closes the connection under everything in flight.
	encodeErr error
	// cause is why the channel closed during the segment; nil while it is
	// open.
	cause *closeCause
	// resetWriting is the broker resetting the socket while the segment
	// was being written (see resetByPeer): it closed the connection over
	// what it had read so far, before its connection.close could be read.
	resetWriting error
	// writeFailed is set when the connection failed while the segment was
	// written: its close cause is then waited for.
	writeFailed bool
}

// count returns how many messages got verdict v.
func (r *segmentReport) count(v verdict) int {
	n := 0
	for _, m := range r.msgs {
		if m.verdict == v {
			n++
		}
	}
	return n
}

// openConfirmChannel opens a confirm channel on conn (see broker.channel
// for the bound on the round trip).
func openConfirmChannel(b *broker, timeout time.Duration) (*confirmChannel, error) {
	ch, conn, err := b.channel(timeout)
	if err != nil {
		return nil, err
	}
	return &confirmChannel{
		ch:       ch,
		conn:     conn,
		writes:   b.conn.Writes(conn),
		chClosed: ch.NotifyClose(make(chan *amqp.Error, 1)),
		returns:  ch.NotifyReturn(make(chan amqp.Return, 256)),
	}, nil
}

// usable reports whether the channel can take another segment.
func (c *confirmChannel) usable() bool { return c != nil && c.cause == nil && !c.ch.IsClosed() }

// publish puts out on the wire in order, until one fails, and waits for
// their confirms. Silence bounds the wait from the last confirm received
// (or from the start): a broker that confirms slowly but steadily is
// waited for; one that goes silent is not. An error means ctx ended.
func (c *confirmChannel) publish(ctx context.Context, out []outgoing, silence time.Duration) (segmentReport, error) {
	rep := segmentReport{msgs: make([]sent, len(out))}
	dcs, err := c.write(ctx, out, &rep)
	if err != nil {
		return rep, err
	}
	if err := c.confirm(ctx, out, dcs, silence, &rep); err != nil {
		return rep, err
	}
	return rep, nil
}

// write publishes out in order until one fails, its writes held (see
// amqpconn.Writes): the segment leaves in a few system calls instead of
// one per message. An error means ctx ended.
func (c *confirmChannel) write(ctx context.Context, out []outgoing, rep *segmentReport) ([]*amqp.DeferredConfirmation, error) {
	dcs := make([]*amqp.DeferredConfirmation, 0, len(out))
	c.writes.Hold()
	// What the broker has not been sent it cannot confirm: the segment
	// goes on the wire before anything waits for it. A write that fails
	// here closed the socket; the confirms then fail with the connection.
	defer func() {
		if err := c.writes.Release(); err != nil {
			rep.writeFailed = true
			if resetByPeer(err) && rep.resetWriting == nil {
				rep.resetWriting = err
			}
		}
	}()
	for i := range out {
		o := &out[i]
		dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, o.exchange, o.routingKey, true, false, *o.msg)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			// Not sent, nor the rest: they stay unsent. Unless the channel
			// was closed or the socket failed, the client could not encode
			// this message, and it is closing the connection.
			if encodeFailure(err) {
				rep.msgs[i].verdict = vUnencodable
				rep.encodeErr = fmt.Errorf("amqp091-go cannot encode it: %w", err)
				break
			}
			// The connection failed while this one was written: part of
			// it may be on the wire (a broker that kills the connection
			// over a frame does so before the rest is read).
			rep.msgs[i].verdict = vLost
			rep.writeFailed = true
			if resetByPeer(err) {
				rep.resetWriting = err
			}
			break
		}
		dcs = append(dcs, dc)
	}
	return dcs, nil
}

// confirm waits for the confirms of dcs and records what became of each
// message in rep. An error means ctx ended.
func (c *confirmChannel) confirm(ctx context.Context, out []outgoing, dcs []*amqp.DeferredConfirmation, silence time.Duration, rep *segmentReport) error {
	returned := map[string]*amqp.Return{}
	if err := c.await(ctx, dcs, silence, returned, rep); err != nil {
		return err
	}
	for i, dc := range dcs {
		m := &rep.msgs[i]
		select {
		case <-dc.Done():
		default:
			m.verdict = vTimedOut
			continue
		}
		switch {
		case dc.Acked():
			m.verdict = vAcked
			if ret, ok := returned[out[i].msg.MessageId]; ok {
				m.verdict, m.ret = vReturned, ret
			}
		case c.ch.IsClosed():
			m.verdict = vLost
		default:
			m.verdict = vNacked
		}
	}
	// A message the client refused while writing it (not one it refused
	// before: a header type it does not know) makes it close the
	// connection: wait for that to be said.
	if c.ch.IsClosed() || rep.writeFailed || (rep.encodeErr != nil && !errors.Is(rep.encodeErr, amqp.ErrFieldType)) {
		rep.cause = c.closeCause(ctx)
	}
	return nil
}

// await waits for the confirms of dcs in order, collecting the returns
// (by message id) that precede them, until all are in, or silence passes
// without one, or ctx ends.
func (c *confirmChannel) await(ctx context.Context, dcs []*amqp.DeferredConfirmation, silence time.Duration, returned map[string]*amqp.Return, rep *segmentReport) error {
	timer := time.NewTimer(silence)
	defer timer.Stop()
	for i := 0; i < len(dcs); {
		select {
		case <-dcs[i].Done():
			for i < len(dcs) && isDone(dcs[i]) {
				i++ // one ack may confirm many (multiple)
			}
			timer.Reset(silence)
		case ret, ok := <-c.returns:
			c.noteReturn(ret, ok, returned)
		case <-timer.C:
			rep.silent = true
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// A basic.return precedes its ack on the wire and the client hands it
	// to the returns listener before resolving the confirm, so once every
	// confirm is in, every return for the segment is buffered.
	for {
		select {
		case ret, ok := <-c.returns:
			if !ok {
				c.returns = nil
				return nil
			}
			c.noteReturn(ret, ok, returned)
		default:
			return nil
		}
	}
}

func (c *confirmChannel) noteReturn(ret amqp.Return, ok bool, returned map[string]*amqp.Return) {
	if !ok {
		c.returns = nil // closed with the channel; a nil chan blocks the select
		return
	}
	returned[ret.MessageId] = &ret
}

func isDone(dc *amqp.DeferredConfirmation) bool {
	select {
	case <-dc.Done():
		return true
	default:
		return false
	}
}

// closeCause reads why the channel closed. The channel is closed (or the
// client refused a message and is closing the connection), so its
// notification is sent or about to be: the shutdown that sends it does no
// I/O first. ctx bounds the wait all the same.
func (c *confirmChannel) closeCause(ctx context.Context) *closeCause {
	if c.cause != nil {
		return c.cause
	}
	var e *amqp.Error
	select {
	case e = <-c.chClosed:
	case <-ctx.Done():
	}
	c.cause = &closeCause{err: e, connection: c.conn.IsClosed() || (e != nil && !e.Recover)}
	return c.cause
}

// close closes the channel. Closing is a round trip the client cannot
// cancel; a broker gone silent would hold the worker (and its batch's
// transaction) for ever, so it waits a second at most: the close then
// finishes, or fails, with the connection.
func (c *confirmChannel) close() {
	if c == nil {
		return
	}
	done := make(chan struct{})
	go func() {
		_ = c.ch.Close()
		close(done)
	}()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}
