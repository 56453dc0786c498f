package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/backoff"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// worker runs claim -> publish -> mark -> commit loops on its own AMQP
// channel. Workers overlap: while one waits for confirms, another claims
// or commits.
type worker struct {
	r   *Relay
	id  int
	log *slog.Logger

	ch     *amqp.Channel
	chConn *amqp.Connection // the connection ch was opened on
	// connClosed and connErr are chConn's close notification and error:
	// a channel is not always told why its connection died.
	connClosed chan *amqp.Error
	connErr    *amqp.Error
	returns    chan amqp.Return
	closed     chan *amqp.Error
	chanErr    *amqp.Error // why ch closed, once read from closed
	// doomed is set when amqp091-go refused to encode a message: it then
	// closes the connection, asynchronously, and nothing more of the batch
	// may be published on it.
	doomed bool
	// exclusive is set while the worker publishes a batch with a suspected
	// row, alone on the connection (Relay.publishMu).
	exclusive bool

	// low is where the next claim of unkeyed rows starts while draining
	// (the first unkeyed id of the previous batch); fullScan forces a
	// claim from the start.
	low      int64
	fullScan bool
	lastFull time.Time

	// afterKey is where the next claim starts visiting ordering keys: the
	// last key of the previous batch, so keys take turns.
	afterKey string

	// keysPending is false while no ordering key has unpublished rows (as
	// the last claim's probe saw), and the worker then sends the plain
	// unkeyed claim. Any wake-up sets it, since a keyed row may have come.
	keysPending bool

	// keyedDone is set when the last batch published a keyed row: the next
	// rows of its key may be claimable at once, so claim again without
	// waiting for a wake-up.
	keyedDone bool

	// spans are the current batch's publish spans (trace.go); nil while
	// tracing is off.
	spans *publishSpans
}

// outcome of one row in a batch.
type outcome struct {
	state     int // statePending (untouched), stateOK, stateFailed or stateSuspected
	reason    string
	msg       string
	permanent bool // failed for good: dead at once
}

const (
	statePending = iota
	stateOK
	stateFailed
	stateSuspected // in flight when the connection died with others: flag, do not charge
)

// errConnectionLost ends a batch whose broker connection died under it.
// The batch still commits what it learned (confirmed rows, suspects), then
// the worker waits for the broker outside any transaction.
var errConnectionLost = errors.New("broker connection lost mid-batch; unconfirmed rows released")

// errNoChannel is send's when it cannot open a channel: nothing of what it
// was given went on the wire.
var errNoChannel = errors.New("no channel: the broker connection is gone")

// run loops until stop ends; ioctx carries the I/O of a batch in flight,
// so a batch can finish after stop during a graceful shutdown.
func (w *worker) run(stop, ioctx context.Context) {
	defer w.closeChannel()
	bo := backoff.Policy{Base: w.r.cfg.ReconnectMin, Max: w.r.cfg.ReconnectMax}
	failures := 0
	poll := time.NewTimer(w.r.cfg.PollInterval)
	defer poll.Stop()
	for stop.Err() == nil {
		// Wait for a usable broker (connected, not blocked by an alarm)
		// before claiming, so rows are never held in a transaction while
		// nothing can be sent.
		if _, err := w.r.broker.ready(stop); err != nil {
			return
		}
		if time.Since(w.lastFull) >= w.r.cfg.RescanInterval {
			w.fullScan = true
		}
		n, err := w.batch(ioctx)
		if err != nil {
			if ioctx.Err() != nil {
				return
			}
			if w.r.noteBatchError(err) {
				return // permanent at start: Run returns it
			}
			delay := bo.Full(failures)
			failures++
			w.log.Warn("batch abandoned", "err", err, "retry_in", delay.String())
			if !backoff.Sleep(stop.Done(), delay) {
				return
			}
			continue
		}
		w.r.noteBatchOK()
		failures = 0
		if n >= w.r.cfg.BatchSize {
			w.r.signal() // more is likely waiting: bring another worker in
			continue
		}
		if w.keyedDone {
			continue // the keys' next rows may now be heads
		}
		if !poll.Stop() {
			select {
			case <-poll.C:
			default:
			}
		}
		poll.Reset(w.r.cfg.PollInterval)
		select {
		case <-stop.Done():
			return
		case <-w.r.wake:
		case <-poll.C:
		}
		// A wake-up may be for a row below low, or for a keyed row.
		w.fullScan, w.keysPending = true, true
	}
}

// batch claims, publishes and marks one batch in one transaction, and
// returns how many rows it claimed.
func (w *worker) batch(ctx context.Context) (int, error) {
	start := time.Now()
	w.keyedDone, w.doomed = false, false
	tx, err := w.r.pool.BeginTx(ctx, claimTx)
	if err != nil {
		w.r.m.dbErrors.Inc()
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = tx.Rollback(rctx) // a no-op after Commit
	}()
	rows, err := w.claimRows(ctx, tx)
	if err != nil {
		w.r.m.dbErrors.Inc()
		return 0, err
	}
	if len(rows) == 0 {
		return 0, tx.Commit(ctx)
	}
	w.spans = w.r.beginSpans(len(rows))
	defer w.spans.abandon() // the spans finish did not end: rolled back
	outs, connErr := w.publishBatch(ctx, rows)
	if connErr != nil && !errors.Is(connErr, errConnectionLost) {
		return 0, connErr // context ended: roll back, nothing is known
	}
	m := w.settle(rows, outs)
	dead, err := mark(ctx, tx, m.published, m.failures, m.suspected, w.r.cfg.MaxAttempts)
	if err != nil {
		w.r.m.dbErrors.Inc()
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		w.r.m.dbErrors.Inc()
		return 0, fmt.Errorf("commit: %w", err)
	}
	w.spans.finish(rows, outs)
	w.report(start, rows, outs, m, dead)
	return len(rows), connErr
}

// claimRows claims the next batch (see claim) in tx and loads the payloads
// it did not bring inline.
func (w *worker) claimRows(ctx context.Context, tx pgx.Tx) ([]claimed, error) {
	from := w.low
	if w.fullScan {
		from, w.fullScan, w.lastFull = 0, false, time.Now()
	}
	cfg := &w.r.cfg
	unkeyedOnly := !w.keysPending
	rows, keys, err := claim(ctx, tx, claimArgs{
		keyedRows:   cfg.BatchSize,
		afterKey:    w.afterKey,
		blockOnDead: cfg.OrderingPolicy != OrderingSkip,
		runMax:      cfg.BatchSize,
		fromID:      from,
		batchRows:   cfg.BatchSize,
		maxPayload:  cfg.MaxPayloadBytes,
		maxBytes:    cfg.MaxBatchBytes,
		unkeyedOnly: unkeyedOnly,
	})
	if err != nil {
		w.fullScan, w.keysPending = true, true
		return nil, err
	}
	w.keysPending = keys
	// Keys appeared while this claim looked at unkeyed rows only: claim
	// again at once, with the keyed half.
	w.keyedDone = unkeyedOnly && keys
	if err := loadPayloads(ctx, tx, rows, cfg.MaxPayloadBytes, cfg.MaxBatchBytes); err != nil {
		return nil, err
	}
	w.advanceCursors(rows)
	return rows, nil
}

// publishBatch publishes rows beside the other workers, or alone when the
// batch holds a suspected row: a lone row in flight is then the only
// message in flight, and if the connection dies it is the row to blame.
func (w *worker) publishBatch(ctx context.Context, rows []claimed) ([]outcome, error) {
	w.exclusive = slices.ContainsFunc(rows, func(c claimed) bool { return c.suspected })
	if w.exclusive {
		w.r.publishMu.Lock()
		defer w.r.publishMu.Unlock()
	} else {
		w.r.publishMu.RLock()
		defer w.r.publishMu.RUnlock()
	}
	return w.publish(ctx, rows)
}

// marks is what a batch writes back: rows published, charged, suspected,
// and how many it left untouched.
type marks struct {
	published       []int64
	publishedMsgIDs []string
	failures        []failure
	suspected       []int64
	released        int
}

// settle sorts the rows by outcome, for mark.
func (w *worker) settle(rows []claimed, outs []outcome) marks {
	var m marks
	for i, o := range outs {
		row := &rows[i]
		switch o.state {
		case stateOK:
			m.published = append(m.published, row.id)
			m.publishedMsgIDs = append(m.publishedMsgIDs, row.messageID)
			w.keyedDone = w.keyedDone || row.key != ""
		case stateFailed:
			m.failures = append(m.failures, failure{
				id: row.id, err: o.reason + ": " + o.msg, permanent: o.permanent,
				delayMS: w.r.retry.Equal(row.attempts).Milliseconds(),
			})
			w.r.m.failed.WithLabelValues(o.reason).Inc()
			w.log.Warn("publish failed", "id", row.id, "message_id", row.messageID,
				"exchange", row.exchange, "routing_key", row.routingKey, "ordering_key", row.key,
				"attempt", row.attempts+1, "reason", o.reason, "permanent", o.permanent, "err", o.msg)
		case stateSuspected:
			m.suspected = append(m.suspected, row.id)
			m.released++
		default:
			m.released++
		}
	}
	return m
}

// report counts and logs a committed batch and tells OnBatch.
func (w *worker) report(start time.Time, rows []claimed, outs []outcome, m marks, dead []int64) {
	now := time.Now()
	w.r.m.batches.Inc()
	w.r.m.batchSeconds.Observe(now.Sub(start).Seconds())
	w.r.m.published.Add(float64(len(m.published)))
	w.r.m.dead.Add(float64(len(dead)))
	w.r.progress.published.Add(int64(len(m.published)))
	w.r.progress.failed.Add(int64(len(m.failures)))
	w.r.m.suspected.Add(float64(len(m.suspected)))
	for i, o := range outs {
		if o.state == stateOK {
			w.r.m.latency.Observe(now.Sub(rows[i].createdAt).Seconds())
		}
	}
	if len(dead) > 0 {
		slices.Sort(dead)
		w.log.Error("rows parked as dead", "count", len(dead), "ids", dead)
	}
	if len(m.suspected) > 0 {
		w.log.Warn("broker connection died with rows in flight; they will be published alone",
			"suspected", len(m.suspected))
	}
	if w.r.cfg.OnBatch != nil {
		w.r.cfg.OnBatch(BatchResult{Published: m.publishedMsgIDs, Failed: len(m.failures), Released: m.released, CommittedAt: now})
	}
}

// advanceCursors moves the claim cursors past what rows claimed.
func (w *worker) advanceCursors(rows []claimed) {
	lastKey := ""
	firstUnkeyed := int64(-1)
	for i := range rows {
		if rows[i].key == "" {
			if firstUnkeyed < 0 {
				firstUnkeyed = rows[i].id
			}
		} else if rows[i].key > lastKey {
			lastKey = rows[i].key
		}
	}
	// No keyed row: every key was passed over or there is none; visit
	// them from the start next time.
	w.afterKey = lastKey
	if firstUnkeyed >= 0 {
		w.low = firstUnkeyed
	}
}

// publish sends the batch and reports each row's outcome. The rows go out
// in id order, in segments: consecutive ordinary rows are pipelined
// together; a suspected row goes alone, after the segment before it is
// confirmed. A segment that loses the connection ends the batch: its
// unconfirmed rows are suspected (or charged, if it was a lone row), later
// segments stay untouched, and publish returns errConnectionLost with the
// outcomes. Any other error means the context ended.
func (w *worker) publish(ctx context.Context, rows []claimed) ([]outcome, error) {
	outs := make([]outcome, len(rows))
	msgs := make([]amqp.Publishing, len(rows))
	frameMax := w.r.broker.frameMax()
	held := map[string]bool{}    // keys whose earlier row did not go out in this batch
	started := map[string]bool{} // keys whose head this batch has taken

	var segment []int
	flush := func() error {
		if len(segment) == 0 {
			return nil
		}
		err := w.sendSegment(ctx, rows, msgs, segment, outs)
		segment = segment[:0]
		return err
	}
	for i := range rows {
		row := &rows[i]
		if row.key != "" {
			// A run is published from its key's head, in id order, up to
			// its first row that is dead or not yet due.
			if held[row.key] || (!started[row.key] && row.id != row.head) || !row.ok {
				held[row.key] = true
				continue
			}
			started[row.key] = true
		}
		if row.payload == nil && row.size <= w.r.cfg.MaxPayloadBytes {
			break // over the batch's byte budget: this row and the rest wait
		}
		send, err := w.prepare(ctx, rows, i, frameMax, msgs, outs)
		if err != nil {
			return outs, err
		}
		if !send {
			holdKey(held, row)
			continue
		}
		if row.suspected {
			if err := flush(); err != nil {
				return outs, err
			}
			segment = append(segment, i)
			if err := flush(); err != nil {
				return outs, err
			}
			continue
		}
		segment = append(segment, i)
	}
	return outs, flush()
}

// prepare checks rows[i] and builds its message in msgs[i]. It reports
// false when the row is not to be sent: refused (its outcome set) or left
// untouched because the broker is in trouble. An error ends the batch: the
// context ended, or the exchange check killed the connection
// (errConnectionLost, the row's outcome set).
func (w *worker) prepare(ctx context.Context, rows []claimed, i, frameMax int, msgs []amqp.Publishing, outs []outcome) (bool, error) {
	row := &rows[i]
	headers, props, err := w.checkRow(row, frameMax)
	if err != nil {
		outs[i] = outcome{state: stateFailed, reason: poisonReason(err), msg: err.Error(), permanent: true}
		return false, nil
	}
	ok, err := w.r.broker.exchangeExists(ctx, row.exchange)
	switch {
	case err != nil && ctx.Err() != nil:
		return false, ctx.Err()
	case errors.Is(err, errCheckKilledConnection):
		// The check put this row's exchange on the wire and the
		// connection died: the row is the suspect, as if it had been
		// published. The rows not yet sent stay untouched.
		if row.suspected && !w.r.broker.lastCloseReason().outage {
			outs[i] = failed(reasonConnectionLost, "the broker connection died while this row's exchange was checked alone: %s", err)
		} else {
			outs[i] = outcome{state: stateSuspected}
		}
		return false, errConnectionLost
	case err != nil:
		return false, nil // broker trouble: leave the row pending, untouched
	case !ok:
		outs[i] = failed(reasonNoExchange, "exchange %q does not exist", row.exchange)
		return false, nil
	}
	msgs[i] = amqp.Publishing{
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
	w.spans.start(ctx, i, row, &msgs[i])
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

// holdKey stops the rest of row's key in this batch: a later row must not
// overtake one that did not go out.
func holdKey(held map[string]bool, row *claimed) {
	if row.key != "" {
		held[row.key] = true
	}
}

// sendSegment publishes rows[seg] and fills their outcomes. Under strict
// ordering a key has at most one unconfirmed row: the segment goes out in
// waves, each holding the next row of every key (and, in the first, every
// row without a key), and a key whose row failed sends no more.
func (w *worker) sendSegment(ctx context.Context, rows []claimed, msgs []amqp.Publishing, seg []int, outs []outcome) error {
	if !w.r.cfg.StrictOrdering || len(seg) == 1 {
		return w.sendAndSettle(ctx, rows, msgs, seg, outs, true)
	}
	stopped := map[string]bool{}
	for wave := 0; ; wave++ {
		todo := nextWave(rows, seg, outs, stopped, wave)
		if len(todo) == 0 {
			return nil
		}
		if err := w.sendAndSettle(ctx, rows, msgs, todo, outs, false); err != nil {
			return err
		}
		for _, i := range todo {
			if k := rows[i].key; k != "" && outs[i].state != stateOK {
				stopped[k] = true
			}
		}
	}
}

// nextWave picks a strict-ordering wave from seg: the next unsent row of
// every key not stopped, and, in the first wave, every row without a key.
func nextWave(rows []claimed, seg []int, outs []outcome, stopped map[string]bool, wave int) []int {
	var todo []int
	seen := map[string]bool{}
	for _, i := range seg {
		if outs[i].state != statePending {
			continue // sent in an earlier wave
		}
		k := rows[i].key
		if k == "" {
			if wave == 0 {
				todo = append(todo, i)
			}
			continue
		}
		if stopped[k] || seen[k] {
			continue
		}
		seen[k] = true
		todo = append(todo, i)
	}
	return todo
}

// sendAndSettle sends rows[todo], looks for overtakes (pipelined segments
// only) and settles the rows whose confirm was lost.
func (w *worker) sendAndSettle(ctx context.Context, rows []claimed, msgs []amqp.Publishing, todo []int, outs []outcome, pipelined bool) error {
	lost, err := w.send(ctx, rows, msgs, todo, outs)
	if errors.Is(err, errNoChannel) {
		return errConnectionLost // nothing sent: the rows stay untouched
	}
	if err != nil {
		return err
	}
	if pipelined {
		w.checkOvertaken(rows, todo, outs)
	}
	if err := w.settleLost(ctx, rows, msgs, todo, lost, outs); err != nil {
		return err
	}
	if w.doomed {
		return errConnectionLost
	}
	return nil
}

// checkOvertaken finds, per key, a row that failed while a later row of
// its key in the same pipelined segment was confirmed: the broker refused
// k (a nack from a queue at its length limit, a return) and took k+1, so
// the key's order broke on the broker. Nothing can undo it; count it and
// say which rows, so an operator can see it and choose strict_ordering.
func (w *worker) checkOvertaken(rows []claimed, seg []int, outs []outcome) {
	failedAt := map[string]int{}
	for _, i := range seg {
		k := rows[i].key
		if k == "" {
			continue
		}
		if f, ok := failedAt[k]; ok {
			if outs[i].state == stateOK {
				w.r.m.overtaken.Inc()
				w.log.Error("ordering broken by the broker: a later row of the key was confirmed after an earlier one failed",
					"ordering_key", k, "failed_id", rows[f].id, "failed_reason", outs[f].reason, "confirmed_id", rows[i].id)
			}
			continue
		}
		if outs[i].state == stateFailed {
			failedAt[k] = i
		}
	}
}

// settleLost decides the rows whose confirm was lost with their channel.
// When the connection survived (the broker closed only the channel, over
// one message), each is published again alone on a fresh channel, so only
// the culprit is charged. When the connection died, a lone row is charged
// (it was the only one in flight) and several are suspected.
func (w *worker) settleLost(ctx context.Context, rows []claimed, msgs []amqp.Publishing, sent, lost []int, outs []outcome) error {
	if len(lost) == 0 {
		return nil
	}
	if w.connectionDied() {
		return w.connectionLost(sent, lost, outs)
	}
	for k, i := range lost {
		again, err := w.send(ctx, rows, msgs, []int{i}, outs)
		if errors.Is(err, errNoChannel) {
			if w.blameable() {
				suspect(lost[k:], outs) // in flight when the first channel closed
			}
			return errConnectionLost
		}
		if err != nil {
			return err
		}
		if len(again) > 0 {
			if w.connectionDied() {
				if w.blameable() {
					suspect(lost[k+1:], outs)
				}
				return w.connectionLost([]int{i}, again, outs)
			}
			outs[i] = failed(reasonChannelClosed, "broker closed the channel while this row was published alone: %s", w.closeReason())
		}
	}
	return nil
}

// connectionDied reports whether the worker's channel closed because its
// connection did: a hard (connection-level) AMQP error, such as the
// FRAME_ERROR a header too big for a frame earns, or no connection left.
// The channel's own error is read first: the connection's state may lag a
// moment behind it, and a dying connection must not be mistaken for a
// channel error, which would charge the next row published alone.
func (w *worker) connectionDied() bool {
	if w.doomed {
		return true
	}
	if e := w.channelError(); e != nil {
		if hardError(e) {
			return true
		}
		if e.Server {
			return false // the broker closed this channel alone, and said why
		}
	}
	// The connection the channel was on, not the broker's current one: a
	// reconnect may already have replaced it. The client shuts the
	// channels down before it marks the connection closed, so without a
	// reason from the channel, give the connection a moment to say (on a
	// loaded machine the client's reader can lag well behind).
	if w.chConn != nil && closedWithin(w.chConn, time.Second) {
		return true
	}
	return !w.r.broker.connected()
}

// hardError reports whether e closes the connection, not only a channel:
// every AMQP reply code but the channel-level (soft) ones.
func hardError(e *amqp.Error) bool {
	switch e.Code {
	case amqp.ContentTooLarge, amqp.NoRoute, amqp.NoConsumers, amqp.AccessRefused,
		amqp.NotFound, amqp.ResourceLocked, amqp.PreconditionFailed:
		return false
	}
	return true
}

// blameable reports whether the worker's channel died of something the
// broker said about what it was sent: a hard error from the server other
// than CONNECTION_FORCED. Only then may a row in flight be the cause.
func (w *worker) blameable() bool {
	e := w.channelError()
	if e == nil || !e.Server {
		e = w.connectionError()
	}
	return !w.doomed && e != nil && e.Server && hardError(e) && e.Code != amqp.ConnectionForced
}

// connectionError is why the channel's connection closed, if it did and
// said why; it waits a moment for the reason of a connection that closed.
func (w *worker) connectionError() *amqp.Error {
	if w.connErr == nil && w.connClosed != nil && w.chConn != nil && closedWithin(w.chConn, time.Second) {
		if e, done := readClose(w.connClosed, 2*time.Second); done {
			w.connErr, w.connClosed = e, nil
		}
	}
	return w.connErr
}

func suspect(idx []int, outs []outcome) {
	for _, i := range idx {
		outs[i] = outcome{state: stateSuspected}
	}
}

// connectionLost records the outcome of rows in flight when the connection
// died and returns errConnectionLost.
func (w *worker) connectionLost(sent, lost []int, outs []outcome) error {
	// Only a connection the broker closed with an error about what it was
	// sent (FRAME_ERROR and the like) can be a row's doing. A network cut
	// or a reset, a broker shutting down (CONNECTION_FORCED) or a silent
	// peer blames no row: the rows stay untouched, not even suspected, as
	// they always were. (The client's own refusal to encode a row is
	// handled where it happens: doomed.)
	if !w.blameable() {
		return errConnectionLost
	}
	// blameable found a server's hard error on the channel or, failing
	// that, on its connection: say whichever it was.
	e := w.channelError()
	if e == nil || !e.Server {
		e = w.connectionError()
	}
	// A lone row is to blame when it was alone on the connection
	// (exclusive).
	if w.exclusive && len(sent) == 1 && len(lost) == 1 {
		i := lost[0]
		outs[i] = failed(reasonConnectionLost, "the broker connection died while this row was published alone: %v", e)
		return errConnectionLost
	}
	suspect(lost, outs)
	return errConnectionLost
}

// send publishes rows[todo] pipelined on the worker's channel and waits for
// their confirms. It fills outs for the rows it can judge and returns the
// ones whose confirm was lost because the channel closed.
func (w *worker) send(ctx context.Context, rows []claimed, msgs []amqp.Publishing, todo []int, outs []outcome) (lost []int, err error) {
	if len(todo) == 0 {
		return nil, nil
	}
	ch, err := w.channel()
	if err != nil {
		return todo, errNoChannel
	}
	sent, err := w.publishAll(ctx, ch, rows, msgs, todo, outs)
	if err != nil {
		return nil, err
	}
	returned, timedOut, err := w.awaitConfirms(ctx, sent)
	if err != nil {
		return nil, err
	}
	closed := ch.IsClosed()
	for _, f := range sent {
		select {
		case <-f.dc.Done():
		default:
			outs[f.i] = failed(reasonTimeout, "no publisher confirm within %s", w.r.cfg.ConfirmTimeout)
			continue
		}
		switch {
		case f.dc.Acked():
			if ret, ok := returned[rows[f.i].messageID]; ok {
				outs[f.i] = failed(reasonUnroutable, "returned by broker: %d %s (exchange %q, routing key %q)",
					ret.ReplyCode, ret.ReplyText, rows[f.i].exchange, rows[f.i].routingKey)
			} else {
				outs[f.i] = outcome{state: stateOK}
			}
		case closed:
			lost = append(lost, f.i)
		default:
			outs[f.i] = failed(reasonNacked, "broker nacked the message")
		}
	}
	if timedOut {
		// Late confirms on this channel must not be read as this batch's
		// or the next one's: start over on a fresh channel.
		w.closeChannel()
	}
	return lost, nil
}

// inflight is a published row awaiting its confirm.
type inflight struct {
	i  int
	dc *amqp.DeferredConfirmation
}

// publishAll puts rows[todo] on the wire, in order, until one fails.
func (w *worker) publishAll(ctx context.Context, ch *amqp.Channel, rows []claimed, msgs []amqp.Publishing, todo []int, outs []outcome) ([]inflight, error) {
	sent := make([]inflight, 0, len(todo))
	for _, i := range todo {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, rows[i].exchange, rows[i].routingKey, true, false, msgs[i])
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			// Not sent, nor the rest: they stay untouched. Unless the
			// channel was closed or the socket failed, the client could
			// not encode this message: it is the culprit for sure, and
			// the client is closing the connection under every row in
			// flight.
			if encodeFailure(err) {
				outs[i] = outcome{state: stateFailed, reason: reasonUnencodable, permanent: true,
					msg: fmt.Sprintf("amqp091-go cannot encode it: %v", err)}
				w.doomed = true
			}
			break
		}
		sent = append(sent, inflight{i, dc})
	}
	return sent, nil
}

// awaitConfirms waits for every confirm of sent, up to ConfirmTimeout,
// collecting the returns (by message id) the broker sent before them.
func (w *worker) awaitConfirms(ctx context.Context, sent []inflight) (returned map[string]amqp.Return, timedOut bool, err error) {
	returned = map[string]amqp.Return{}
	timeout := time.NewTimer(w.r.cfg.ConfirmTimeout)
	defer timeout.Stop()
	for _, f := range sent {
	wait:
		for !timedOut {
			select {
			case <-f.dc.Done():
				break wait
			case ret, ok := <-w.returns:
				if !ok {
					w.returns = nil
					continue
				}
				returned[ret.MessageId] = ret
			case <-timeout.C:
				timedOut = true
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
		}
	}
	// A basic.return precedes its ack on the wire and the client hands it
	// to w.returns before resolving the confirm, so once every confirm is
	// in, every return for this batch is already buffered.
	for {
		select {
		case ret, ok := <-w.returns:
			if !ok {
				w.returns = nil
				return returned, timedOut, nil
			}
			returned[ret.MessageId] = ret
		default:
			return returned, timedOut, nil
		}
	}
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

func failed(reason, format string, args ...any) outcome {
	return outcome{state: stateFailed, reason: reason, msg: fmt.Sprintf(format, args...)}
}

// channel returns the worker's open confirm channel, opening one on the
// current connection if needed. It never waits for a connection: a batch
// holds a transaction, which must not outlive the broker.
func (w *worker) channel() (*amqp.Channel, error) {
	if w.ch != nil && !w.ch.IsClosed() {
		return w.ch, nil
	}
	w.closeChannel()
	ch, conn, err := w.r.broker.channel(w.r.cfg.ConfirmTimeout)
	if err != nil {
		return nil, err
	}
	w.ch, w.chConn = ch, conn
	w.connClosed, w.connErr = conn.NotifyClose(make(chan *amqp.Error, 1)), nil
	w.returns = ch.NotifyReturn(make(chan amqp.Return, 256))
	w.closed = ch.NotifyClose(make(chan *amqp.Error, 1))
	w.chanErr = nil
	return ch, nil
}

// channelError is why the worker's channel closed, if it did and the
// broker or the connection said why (nil otherwise). The client resolves
// the pending confirms of a closing channel and hands out its close
// reason from the same shutdown, in no promised order, so when the channel
// is closed the reason is awaited (briefly: the shutdown is under way, and
// ends by closing w.closed).
func (w *worker) channelError() *amqp.Error {
	if w.chanErr == nil && w.closed != nil {
		var wait time.Duration
		if w.ch != nil && w.ch.IsClosed() {
			wait = time.Second
		}
		if e, done := readClose(w.closed, wait); done {
			w.chanErr, w.closed = e, nil
		}
	}
	return w.chanErr
}

// readClose reads a close notification (amqp091-go sends at most one, then
// closes the chan): at once, or waiting up to wait. done says it came; e is
// nil after a graceful close.
func readClose(c chan *amqp.Error, wait time.Duration) (e *amqp.Error, done bool) {
	if wait <= 0 {
		select {
		case e := <-c:
			return e, true
		default:
			return nil, false
		}
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case e := <-c:
		return e, true
	case <-t.C:
		return nil, false
	}
}

// closeReason says why the last channel closed, if the broker said.
func (w *worker) closeReason() string {
	if e := w.channelError(); e != nil {
		return e.Error()
	}
	return "channel closed"
}

// closeChannel closes the worker's channel. Closing is a round trip the
// client cannot cancel; a broker gone silent would hold the worker (and its
// batch's transaction) for ever, so it waits a second at most: the close
// then finishes, or fails, with the connection.
func (w *worker) closeChannel() {
	if ch := w.ch; ch != nil {
		done := make(chan struct{})
		go func() {
			_ = ch.Close()
			close(done)
		}()
		t := time.NewTimer(time.Second)
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
	}
	w.ch, w.chConn, w.returns, w.closed, w.chanErr = nil, nil, nil, nil, nil
	w.connClosed, w.connErr = nil, nil
}
