package relay

import (
	"context"
	"errors"
	"math"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/outbox"
)

// batch is one claimed batch on its way through the worker: the rows in id
// order, the message built for each, and what became of each.
type batch struct {
	rows []claimed
	msgs []amqp.Publishing
	outs []outcome
	// held are the keys that may send nothing more in this batch: a row
	// of the key did not go out, or went out and was not published, and
	// a later row must not overtake it.
	held map[string]bool
}

func newBatch(rows []claimed) *batch {
	return &batch{rows: rows, msgs: make([]amqp.Publishing, len(rows)), outs: make([]outcome, len(rows)), held: map[string]bool{}}
}

// hold stops the rest of row i's key in this batch.
func (b *batch) hold(i int) {
	if k := b.rows[i].key; k != "" {
		b.held[k] = true
	}
}

// errConnectionLost ends a batch whose broker connection died under it.
// The batch still commits what it learned (confirmed rows, suspects), then
// the worker waits for the broker outside any transaction.
var errConnectionLost = errors.New("broker connection lost mid-batch; unconfirmed rows released")

// errBrokerStalled ends a batch whose node stopped making progress
// (confirms stopped coming, or every message was nacked) while the
// connection lived. The batch commits what it learned; the rows in flight
// are not charged; the worker left the node (see broker.abandon).
var errBrokerStalled = errors.New("broker node made no progress mid-batch; unconfirmed rows released uncharged")

// errNoChannel: no channel could be opened, so nothing went on the wire.
var errNoChannel = errors.New("no channel: the broker connection is gone")

// plan sends the batch and fills its outcomes. The rows go out in id
// order, in segments: consecutive ordinary rows are pipelined together; a
// suspected row goes alone, after the segment before it is settled. A keyed
// run goes from its key's head, up to its first row that is not due, is
// dead, or is refused. A segment that loses the connection or stalls ends
// the batch (errConnectionLost, errBrokerStalled), the later rows staying
// untouched. Any other error means the context ended.
func (w *worker) plan(ctx context.Context, b *batch) error {
	frameMax := w.r.broker.frameMax()
	started := map[string]bool{} // keys whose head this batch has taken
	var seg []int
	flush := func() error {
		if len(seg) == 0 {
			return nil
		}
		err := w.sendSegment(ctx, b, seg)
		seg = seg[:0]
		return err
	}
	for i := range b.rows {
		row := &b.rows[i]
		if row.key != "" {
			if b.held[row.key] || (!started[row.key] && row.id != row.head) || !row.ok {
				b.hold(i)
				continue
			}
			started[row.key] = true
		}
		if row.payload == nil && row.size <= w.r.cfg.MaxPayloadBytes {
			break // over the batch's byte budget: this row and the rest wait
		}
		send, err := w.prepare(ctx, b, i, frameMax)
		if err != nil {
			return err
		}
		if !send {
			b.hold(i)
			continue
		}
		if row.suspected { // alone, after what came before it
			if err := flush(); err != nil {
				return err
			}
			seg = append(seg, i)
			if err := flush(); err != nil {
				return err
			}
			continue
		}
		seg = append(seg, i)
	}
	return flush()
}

// prepare checks row i and builds its message. It reports false when the
// row is not to be sent: refused (its outcome set) or left untouched
// because the broker is in trouble. An error ends the batch: the context
// ended, or the exchange check killed the connection (errConnectionLost,
// the row's outcome set).
func (w *worker) prepare(ctx context.Context, b *batch, i, frameMax int) (bool, error) {
	row := &b.rows[i]
	headers, props, err := w.checkRow(row, frameMax)
	if err != nil {
		b.outs[i] = outcome{state: stateFailed, reason: poisonReason(err), msg: err.Error(), permanent: true}
		return false, nil
	}
	ok, err := w.r.broker.exchangeExists(ctx, row.exchange)
	switch {
	case err != nil && ctx.Err() != nil:
		return false, ctx.Err()
	case errors.Is(err, errCheckKilledConnection):
		// The check put this row's exchange on the wire and the broker
		// killed the connection over it: the row is the suspect, as if it
		// had been published, and to blame when it was already alone.
		if row.suspected {
			b.outs[i] = failed(reasonConnectionLost, "the broker connection died while this row's exchange was checked alone: %s", err)
		} else {
			b.outs[i] = outcome{state: stateSuspected}
		}
		return false, errConnectionLost
	case err != nil:
		return false, nil // broker trouble: leave the row pending, untouched
	case !ok:
		b.outs[i] = failed(reasonNoExchange, "exchange %q does not exist", row.exchange)
		return false, nil
	}
	b.msgs[i] = amqp.Publishing{
		Headers:       headers,
		ContentType:   row.contentType,
		DeliveryMode:  amqp.Persistent,
		MessageId:     row.messageID,
		Timestamp:     row.createdAt,
		Body:          row.payload,
		Type:          props.Type,
		CorrelationId: props.CorrelationID,
		ReplyTo:       props.ReplyTo,
		Expiration:    props.Expiration,
		Priority:      props.Priority,
		AppId:         props.AppID,
	}
	w.spans.start(ctx, i, row, &b.msgs[i])
	return true, nil
}

// checkRow refuses, before it goes on the wire, a row AMQP or the broker
// could never carry (see checkRow in limits.go).
func (w *worker) checkRow(row *claimed, frameMax int) (amqp.Table, outbox.AMQPProperties, error) {
	props, err := row.props.amqpProperties()
	if err != nil {
		return nil, props, err
	}
	if w.r.cfg.skipRowChecks {
		// Tests only: let a row the broker will refuse through, to prove
		// the second line of defence (suspects published alone).
		t, err := headersTable(row.headers, math.MaxInt32)
		return t, props, err
	}
	t, err := checkRow(row.exchange, row.routingKey, row.contentType, row.headers, row.size, w.r.cfg.MaxPayloadBytes, frameMax, props)
	return t, props, err
}

// sendSegment publishes rows seg. Pipelined (the default) it is one send.
// Under strict ordering a key has at most one unconfirmed row: the segment
// goes out in waves, each holding the next row of every key (and, in the
// first, every row without a key), and a key whose row was not published
// sends no more.
func (w *worker) sendSegment(ctx context.Context, b *batch, seg []int) error {
	if !w.r.cfg.StrictOrdering || len(seg) == 1 {
		return w.send(ctx, b, seg, true)
	}
	for wave := 0; ; wave++ {
		todo := nextWave(b, seg, wave)
		if len(todo) == 0 {
			return nil
		}
		if err := w.send(ctx, b, todo, false); err != nil {
			return err
		}
	}
}

// nextWave picks a strict-ordering wave from seg: the next unsent row of
// every key not held, and, in the first wave, every row without a key.
func nextWave(b *batch, seg []int, wave int) []int {
	var todo []int
	seen := map[string]bool{}
	for _, i := range seg {
		if b.outs[i].state != stateUntouched {
			continue // sent in an earlier wave
		}
		k := b.rows[i].key
		if k == "" {
			if wave == 0 {
				todo = append(todo, i)
			}
			continue
		}
		if b.held[k] || seen[k] {
			continue
		}
		seen[k] = true
		todo = append(todo, i)
	}
	return todo
}

// send publishes rows todo on the worker's channel, judges the report,
// records overtakes (pipelined sends only) and holds every key whose row
// was not published. It ends the batch when the connection died or the
// node stalled.
func (w *worker) send(ctx context.Context, b *batch, todo []int, pipelined bool) error {
	cc, err := w.channel()
	if err != nil {
		return errConnectionLost // nothing sent: the rows stay untouched
	}
	rep, err := cc.publish(ctx, b.outgoing(todo), w.r.cfg.ConfirmTimeout)
	if err != nil {
		return err
	}
	j := judge(&rep, w.exclusive && len(todo) == 1)
	for k, i := range todo {
		b.outs[i] = j.outs[k]
	}
	if pipelined && j.missed() {
		w.noteOvertakes(b, todo, &rep)
	}
	if err := w.publishAlone(ctx, b, todo, j.again); err != nil {
		return err
	}
	for _, i := range todo {
		if b.outs[i].state != statePublished {
			b.hold(i)
		}
	}
	switch {
	case j.stall != noStall:
		w.stalled(j, cc, &rep)
		return errBrokerStalled
	case rep.cause != nil && rep.cause.connection:
		return errConnectionLost
	}
	return nil
}

// outgoing lists the messages of rows todo.
func (b *batch) outgoing(todo []int) []outgoing {
	out := make([]outgoing, len(todo))
	for k, i := range todo {
		out[k] = outgoing{exchange: b.rows[i].exchange, routingKey: b.rows[i].routingKey, msg: &b.msgs[i]}
	}
	return out
}

// noteOvertakes counts and logs each overtake in a pipelined send: nothing
// can undo one, so an operator must see it (and may choose
// strict_ordering).
func (w *worker) noteOvertakes(b *batch, todo []int, rep *segmentReport) {
	keys := make([]string, len(todo))
	outs := make([]outcome, len(todo))
	for k, i := range todo {
		keys[k], outs[k] = b.rows[i].key, b.outs[i]
	}
	for _, o := range overtakes(keys, rep, outs) {
		first, later := todo[o.first], todo[o.overtook]
		reason := b.outs[first].reason
		if reason == "" {
			reason = rep.msgs[o.first].verdict.String()
		}
		w.r.m.overtaken.Inc()
		w.log.Error("ordering broken by the broker: a later row of the key was confirmed after an earlier one was not",
			"ordering_key", o.key, "failed_id", b.rows[first].id, "failed_reason", reason, "confirmed_id", b.rows[later].id)
	}
}

// publishAlone publishes again, each alone on a fresh channel, the rows
// whose confirms were lost when the broker closed the channel over one of
// them (judgement.again): only the culprit is charged.
func (w *worker) publishAlone(ctx context.Context, b *batch, todo, again []int) error {
	for k, pos := range again {
		i := todo[pos]
		cc, err := w.channel()
		if err != nil {
			return errConnectionLost // the rest stay untouched
		}
		rep, err := cc.publish(ctx, b.outgoing([]int{i}), w.r.cfg.ConfirmTimeout)
		if err != nil {
			return err
		}
		j := judge(&rep, w.exclusive)
		b.outs[i] = j.outs[0]
		switch {
		case j.stall != noStall:
			w.stalled(j, cc, &rep)
			return errBrokerStalled
		case rep.cause != nil && rep.cause.connection:
			if rep.cause.server() {
				for _, p := range again[k+1:] {
					b.outs[todo[p]] = outcome{state: stateSuspected} // in flight when the first channel closed
				}
			}
			return errConnectionLost
		}
	}
	return nil
}

// stalled handles a send whose node made no progress: it is counted, the
// rows it left are counted as uncharged, and the worker leaves the node
// when another is listed. The channel is dropped either way: late confirms
// on it must not be read as the next send's.
func (w *worker) stalled(j judgement, cc *confirmChannel, rep *segmentReport) {
	why := string(j.stall)
	timedOut, deferred := rep.count(vTimedOut), j.count(stateDeferred)
	w.r.m.stalls.WithLabelValues(why).Inc()
	w.r.m.uncharged.WithLabelValues(why).Add(float64(timedOut + deferred))
	left := w.r.broker.abandon(cc.conn, why)
	w.log.Warn("broker node made no progress; rows released uncharged",
		"reason", why, "timed_out", timedOut, "deferred", deferred, "left_node", left)
	w.closeChannel()
}

// channel returns the worker's open confirm channel, opening one on the
// current connection if needed. It never waits for a connection: a batch
// holds a transaction, which must not outlive the broker.
func (w *worker) channel() (*confirmChannel, error) {
	if w.cc.usable() {
		return w.cc, nil
	}
	w.closeChannel()
	cc, err := openConfirmChannel(w.r.broker, w.r.cfg.ConfirmTimeout)
	if err != nil {
		return nil, errNoChannel
	}
	w.cc = cc
	return cc, nil
}

// closeChannel closes the worker's channel, if any.
func (w *worker) closeChannel() {
	w.cc.close()
	w.cc = nil
}

func (v verdict) String() string {
	switch v {
	case vAcked:
		return "acked"
	case vReturned:
		return "returned"
	case vNacked:
		return "nacked"
	case vLost:
		return "lost"
	case vTimedOut:
		return reasonTimeout
	case vUnencodable:
		return reasonUnencodable
	}
	return "unsent"
}
