package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Blame: who pays for what went wrong in a segment. The rule is that a row
// is charged an attempt only for what the broker said about that message
// (a return, a nack while others of its send were taken, a channel closed
// over it, a connection killed while it was alone in flight), never for
// the broker's own trouble (silence, a node that takes nothing, a cut
// connection, a shutdown). These functions are pure: blame_test.go walks
// their decision table without services.

// rowState is what a batch learned about one row.
type rowState int

const (
	// stateUntouched: nothing is known against the row (not sent, or lost
	// to the broker's trouble); it stays pending as it was.
	stateUntouched rowState = iota
	// statePublished: confirmed and not returned; marked published.
	statePublished
	// stateFailed: charged an attempt (dead when permanent or at
	// MaxAttempts).
	stateFailed
	// stateSuspected: in flight with others when the broker killed the
	// connection over one of them; flagged, not charged, published alone
	// next time.
	stateSuspected
	// stateDeferred: the broker took none of the messages sent with it
	// (every one nacked); the row keeps its attempts, notes why, and waits
	// out a retry delay.
	stateDeferred
)

// outcome of one row in a batch.
type outcome struct {
	state     rowState
	reason    string
	msg       string
	permanent bool // failed for good: dead at once
}

func failed(reason, format string, args ...any) outcome {
	return outcome{state: stateFailed, reason: reason, msg: fmt.Sprintf(format, args...)}
}

// stall says why a segment showed that its node makes no progress ("" when
// it did not): the relay then leaves the node (see broker.abandon).
type stall string

const (
	noStall      stall = ""
	stallSilence stall = "confirm_timeout" // no confirm for ConfirmTimeout
	stallNacks   stall = "nacked"          // every message of the send nacked
)

// judgement is what judge decided for a segment.
type judgement struct {
	outs []outcome // one per message of the segment
	// again are the segment's positions to publish again, each alone on a
	// fresh channel: their confirms were lost when the broker closed the
	// channel alone, over one of them, which only publishing them alone
	// can tell.
	again []int
	stall stall
}

// count returns how many of the segment's rows got state s.
func (j judgement) count(s rowState) int {
	n := 0
	for _, o := range j.outs {
		if o.state == s {
			n++
		}
	}
	return n
}

// missed reports whether some row was not published: only then can a
// send hold an overtake (the common all-confirmed send skips the search).
func (j judgement) missed() bool { return j.count(statePublished) < len(j.outs) }

// judge decides a segment's outcomes from its report. lone says the
// segment was a single row published alone on the connection (Relay.publishMu
// held exclusively): if the broker kills the connection then, that row is
// to blame for certain.
func judge(rep *segmentReport, lone bool) judgement {
	j := judgement{outs: make([]outcome, len(rep.msgs))}
	taken := rep.count(vAcked) + rep.count(vReturned)
	cause := rep.cause
	for i, m := range rep.msgs {
		o := &j.outs[i]
		switch m.verdict {
		case vAcked:
			o.state = statePublished
		case vReturned:
			*o = failed(reasonUnroutable, "returned by broker: %d %s (exchange %q, routing key %q)",
				m.ret.ReplyCode, m.ret.ReplyText, m.ret.Exchange, m.ret.RoutingKey)
		case vNacked:
			if taken > 0 {
				*o = failed(reasonNacked, "broker nacked the message")
			} else {
				*o = outcome{state: stateDeferred, reason: reasonNacked,
					msg: "broker nacked every message sent with this one: not charged, the node takes nothing"}
				j.stall = stallNacks
			}
		case vTimedOut:
			j.stall = stallSilence // untouched: the silence is the broker's
		case vUnencodable:
			*o = outcome{state: stateFailed, reason: reasonUnencodable, permanent: true, msg: rep.encodeErr.Error()}
		case vLost:
			switch {
			case cause.channelOnly() && len(rep.msgs) == 1:
				*o = failed(reasonChannelClosed, "broker closed the channel while this row was published alone: %s", cause)
			case cause.channelOnly():
				j.again = append(j.again, i)
			case cause.server() && lone:
				*o = failed(reasonConnectionLost, "the broker connection died while this row was published alone: %s", cause)
			case rep.resetBlames() && lone:
				*o = failed(reasonConnectionLost, "the broker reset the connection while this row was written alone: %v", rep.resetWriting)
			case cause.server(), rep.resetBlames():
				o.state = stateSuspected
			}
		}
	}
	if rep.silent {
		j.stall = stallSilence
	}
	return j
}

// overtake is a keyed row the broker took after refusing, or not
// confirming, an earlier row of its key sent in the same pipelined send:
// the key's order broke on the broker.
type overtake struct {
	key             string
	first, overtook int // positions in the send
}

// overtakes finds them: per key, the first row that was on the wire and not
// published, and every published row of the key after it.
func overtakes(keys []string, rep *segmentReport, outs []outcome) []overtake {
	var found []overtake
	missed := map[string]int{}
	for i, k := range keys {
		if k == "" {
			continue
		}
		if f, ok := missed[k]; ok {
			if outs[i].state == statePublished {
				found = append(found, overtake{key: k, first: f, overtook: i})
			}
			continue
		}
		if outs[i].state != statePublished && rep.msgs[i].verdict != vUnsent {
			missed[k] = i
		}
	}
	return found
}

// encodeFailure tells whether a publish error is amqp091-go refusing to
// encode the message rather than the connection failing under it. Both come
// back from the same call, raw: a write on a socket that was cut (a
// *net.OpError "connection reset by peer", a closed pipe) must leave the row
// untouched, never park it.
func encodeFailure(err error) bool {
	var netErr net.Error
	var errno syscall.Errno
	switch {
	case errors.Is(err, amqp.ErrClosed), errors.As(err, &netErr), errors.As(err, &errno),
		errors.Is(err, net.ErrClosed), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, io.ErrClosedPipe), errors.Is(err, io.ErrShortWrite), errors.Is(err, os.ErrDeadlineExceeded):
		return false
	}
	return true
}

// resetBlames reports whether the broker reset the socket while the
// segment was written, the relay not having left the node: the rows in
// flight are then to blame as for a hard close.
func (r *segmentReport) resetBlames() bool { return r.resetWriting != nil && !r.cause.left() }

// resetByPeer tells whether a write failed because the peer reset the
// socket (or had already closed it). A broker that reads a frame it will
// not take (one over frame_max) closes the connection at once, while the
// client may still be writing the rest: the client's write then fails and
// the broker's connection.close is lost with the socket. A link that goes
// dark fails no write (the kernel buffers it); only a live peer resets.
func resetByPeer(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// checkBlamesRow tells whether an exchange check's failure is the row's
// doing: the client could not encode the name, or the broker closed the
// connection with a hard error about what it was sent. A cut socket, a reset
// or a broker shutting down blames no row.
func checkBlamesRow(err error) bool {
	var aerr *amqp.Error
	if errors.As(err, &aerr) && aerr != amqp.ErrFieldType {
		return (&closeCause{err: aerr, connection: true}).server()
	}
	return encodeFailure(err)
}
