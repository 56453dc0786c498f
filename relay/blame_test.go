package relay

import (
	"errors"
	"slices"
	"syscall"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The close causes a segment can end with, as amqp091-go reports them.
var (
	causeOpen     *closeCause
	causeSoft     = &closeCause{err: &amqp.Error{Code: amqp.PreconditionFailed, Server: true, Recover: true, Reason: "PRECONDITION_FAILED"}}
	causeFrame    = &closeCause{err: &amqp.Error{Code: amqp.FrameError, Server: true, Reason: "FRAME_ERROR"}, connection: true}
	causeForced   = &closeCause{err: &amqp.Error{Code: amqp.ConnectionForced, Server: true, Reason: "CONNECTION_FORCED"}, connection: true}
	causeCut      = &closeCause{err: &amqp.Error{Code: amqp.FrameError, Reason: "read: connection reset by peer"}, connection: true}
	causeGraceful = &closeCause{connection: true}
	causeLeft     = &closeCause{connection: true, abandoned: true, err: causeFrame.err}
)

func report(cause *closeCause, silent bool, vs ...verdict) *segmentReport {
	r := &segmentReport{cause: cause, silent: silent}
	for _, v := range vs {
		m := sent{verdict: v}
		if v == vReturned {
			m.ret = &amqp.Return{ReplyCode: amqp.NoRoute, ReplyText: "NO_ROUTE"}
		}
		if v == vUnencodable {
			r.encodeErr = errors.New("string too long")
		}
		r.msgs = append(r.msgs, m)
	}
	return r
}

// resetWriting marks r as written when the broker reset the socket.
func resetWriting(r *segmentReport) *segmentReport {
	r.resetWriting = syscall.ECONNRESET
	return r
}

func states(outs []outcome) []rowState {
	s := make([]rowState, len(outs))
	for i, o := range outs {
		s[i] = o.state
	}
	return s
}

const (
	U = stateUntouched
	P = statePublished
	F = stateFailed
	S = stateSuspected
	D = stateDeferred
)

// The decision table: every close cause × what was in flight → who is
// charged (F), suspected (S), deferred uncharged (D), untouched (U), sent
// again alone, and whether the node stalled.
func TestJudge(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		rep   *segmentReport
		lone  bool
		want  []rowState
		again []int
		stall stall
	}{
		{"all acked", report(causeOpen, false, vAcked, vAcked), false, []rowState{P, P}, nil, noStall},
		{"a return charges that row only", report(causeOpen, false, vAcked, vReturned), false, []rowState{P, F}, nil, noStall},
		{"a nack among acks charges the nacked row", report(causeOpen, false, vAcked, vNacked, vAcked), false, []rowState{P, F, P}, nil, noStall},
		{"a nack beside a return: the broker took the send, the nack is the row's", report(causeOpen, false, vReturned, vNacked), false, []rowState{F, F}, nil, noStall},
		{"every message nacked: the node's trouble, deferred uncharged", report(causeOpen, false, vNacked, vNacked), false, []rowState{D, D}, nil, stallNacks},
		{"a lone row nacked alone is not charged either", report(causeOpen, false, vNacked), true, []rowState{D}, nil, stallNacks},
		{"silence after some acks: the rest untouched, stall", report(causeOpen, true, vAcked, vTimedOut, vTimedOut), false, []rowState{P, U, U}, nil, stallSilence},
		{"silence alone: untouched even when lone", report(causeOpen, true, vTimedOut), true, []rowState{U}, nil, stallSilence},
		{"soft channel close, several lost: sent again alone", report(causeSoft, false, vAcked, vLost, vLost), false, []rowState{P, U, U}, []int{1, 2}, noStall},
		{"soft channel close, the row alone: charged", report(causeSoft, false, vLost), false, []rowState{F}, nil, noStall},
		{"broker kills the connection, several in flight: suspected", report(causeFrame, false, vAcked, vLost, vLost), false, []rowState{P, S, S}, nil, noStall},
		{"broker kills the connection, lone row alone on it: charged", report(causeFrame, false, vLost), true, []rowState{F}, nil, noStall},
		{"broker kills the connection, one row but not alone on it: suspected", report(causeFrame, false, vLost), false, []rowState{S}, nil, noStall},
		{"CONNECTION_FORCED blames no row", report(causeForced, false, vLost, vLost), false, []rowState{U, U}, nil, noStall},
		{"CONNECTION_FORCED blames no lone row", report(causeForced, false, vLost), true, []rowState{U}, nil, noStall},
		{"a cut socket blames no row", report(causeCut, false, vLost, vLost), true, []rowState{U, U}, nil, noStall},
		{"reset while a lone row was written: charged", resetWriting(report(causeCut, false, vLost)), true, []rowState{F}, nil, noStall},
		{"reset while a batch was written: in flight suspected", resetWriting(report(causeCut, false, vAcked, vLost, vLost, vUnsent)), false, []rowState{P, S, S, U}, nil, noStall},
		{"reset before the cause is read: charged all the same", resetWriting(report(causeOpen, false, vLost)), true, []rowState{F}, nil, noStall},
		{"reset after the relay left the node: no row to blame", resetWriting(report(causeLeft, false, vLost)), true, []rowState{U}, nil, noStall},
		{"a graceful close blames no row", report(causeGraceful, false, vLost), true, []rowState{U}, nil, noStall},
		{"the relay left the node: no row to blame", report(causeLeft, false, vLost), true, []rowState{U}, nil, noStall},
		{"the client refuses one: it is dead, the others untouched", report(causeCut, false, vLost, vUnencodable, vUnsent), false, []rowState{U, F, U}, nil, noStall},
		{"unsent rows stay untouched", report(causeOpen, false, vAcked, vUnsent), false, []rowState{P, U}, nil, noStall},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			j := judge(tt.rep, tt.lone)
			if got := states(j.outs); !slices.Equal(got, tt.want) {
				t.Errorf("states = %v, want %v", got, tt.want)
			}
			if !slices.Equal(j.again, tt.again) {
				t.Errorf("again = %v, want %v", j.again, tt.again)
			}
			if j.stall != tt.stall {
				t.Errorf("stall = %q, want %q", j.stall, tt.stall)
			}
			for i, o := range j.outs {
				if o.state == stateFailed && (o.reason == "" || o.msg == "") {
					t.Errorf("row %d charged without a reason: %+v", i, o)
				}
			}
		})
	}
}

// The reasons a charged row is given, by cause.
func TestJudgeReasons(t *testing.T) {
	t.Parallel()
	tests := []struct {
		rep       *segmentReport
		lone      bool
		reason    string
		permanent bool
	}{
		{report(causeOpen, false, vReturned, vAcked), false, reasonUnroutable, false},
		{report(causeOpen, false, vNacked, vAcked), false, reasonNacked, false},
		{report(causeSoft, false, vLost), false, reasonChannelClosed, false},
		{report(causeFrame, false, vLost), true, reasonConnectionLost, false},
		{report(causeCut, false, vUnencodable), false, reasonUnencodable, true},
	}
	for _, tt := range tests {
		o := judge(tt.rep, tt.lone).outs[0]
		if o.reason != tt.reason || o.permanent != tt.permanent {
			t.Errorf("%v: reason %q permanent %v, want %q %v", tt.rep.msgs[0].verdict, o.reason, o.permanent, tt.reason, tt.permanent)
		}
	}
}

// Overtakes: a later row of a key published after an earlier row of the
// key that went on the wire and was not published (refused, timed out,
// lost), in one pipelined send.
func TestOvertakes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		keys  []string
		vs    []verdict
		cause *closeCause
		want  [][2]int // (first, overtook)
	}{
		{"in order", []string{"a", "a", "a"}, []verdict{vAcked, vAcked, vAcked}, nil, nil},
		{"a nack then a confirm", []string{"a", "a"}, []verdict{vNacked, vAcked}, nil, [][2]int{{0, 1}}},
		{"a timeout then a confirm", []string{"a", "a", "a"}, []verdict{vTimedOut, vAcked, vAcked}, nil, [][2]int{{0, 1}, {0, 2}}},
		{"a return then a confirm", []string{"a", "a"}, []verdict{vReturned, vAcked}, nil, [][2]int{{0, 1}}},
		{"other keys do not count", []string{"a", "b", "", "a"}, []verdict{vAcked, vNacked, vAcked, vAcked}, nil, nil},
		{"unkeyed rows never overtake", []string{"", ""}, []verdict{vNacked, vAcked}, nil, nil},
		{"an unsent row is no overtake", []string{"a", "a"}, []verdict{vUnsent, vAcked}, nil, nil},
		{"confirms before the miss are fine", []string{"a", "a", "a"}, []verdict{vAcked, vTimedOut, vTimedOut}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rep := report(tt.cause, false, tt.vs...)
			outs := judge(rep, false).outs
			var got [][2]int
			for _, o := range overtakes(tt.keys, rep, outs) {
				got = append(got, [2]int{o.first, o.overtook})
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("overtakes = %v, want %v", got, tt.want)
			}
		})
	}
}

// Strict-ordering waves: the next row of every key not held, unkeyed rows
// in the first wave only, rows already sent skipped.
func TestNextWave(t *testing.T) {
	t.Parallel()
	rows := []claimed{{id: 1, key: "a"}, {id: 2, key: "a"}, {id: 3}, {id: 4, key: "b"}, {id: 5, key: "b"}, {id: 6, key: "c"}}
	b := newBatch(rows)
	seg := []int{0, 1, 2, 3, 4, 5}
	if got := nextWave(b, seg, 0); !slices.Equal(got, []int{0, 2, 3, 5}) {
		t.Fatalf("wave 0 = %v, want [0 2 3 5]", got)
	}
	b.outs[0], b.outs[2], b.outs[3], b.outs[5] = outcome{state: statePublished}, outcome{state: statePublished}, outcome{state: stateFailed}, outcome{state: statePublished}
	b.hold(3) // b's row was not published: b sends no more
	if got := nextWave(b, seg, 1); !slices.Equal(got, []int{1}) {
		t.Fatalf("wave 1 = %v, want [1]", got)
	}
}
