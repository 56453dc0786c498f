package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/backoff"
)

// worker runs claim -> publish -> mark -> commit loops on its own AMQP
// channel. Workers overlap: while one waits for confirms, another claims
// or commits.
type worker struct {
	r   *Relay
	id  int
	log *slog.Logger

	ch      *amqp.Channel
	returns chan amqp.Return
	closed  chan *amqp.Error

	// low is where the next claim starts while draining (the first id of
	// the previous batch); fullScan forces a claim from the start.
	low      int64
	fullScan bool
	lastFull time.Time

	// keyedDone is set when the last batch published a keyed row: the next
	// row of its key may be claimable at once, so claim again without
	// waiting for a wake-up (else a key's backlog would advance by one row
	// per poll interval).
	keyedDone bool
}

// outcome of one row in a batch.
type outcome struct {
	state  int // statePending (untouched), stateOK or stateFailed
	reason string
	msg    string
}

const (
	statePending = iota
	stateOK
	stateFailed
)

// run loops until stop ends; io carries the I/O of a batch in flight, so a
// batch can finish after stop during a graceful shutdown.
func (w *worker) run(stop, io context.Context) {
	defer w.closeChannel()
	bo := backoff.Policy{Base: w.r.cfg.ReconnectMin, Max: w.r.cfg.ReconnectMax}
	failures := 0
	poll := time.NewTimer(w.r.cfg.PollInterval)
	defer poll.Stop()
	for stop.Err() == nil {
		// Wait for a usable broker (connected, not blocked by an alarm)
		// before claiming, so rows are not held while nothing can be sent.
		if _, err := w.r.broker.ready(stop); err != nil {
			return
		}
		if time.Since(w.lastFull) >= w.r.cfg.RescanInterval {
			w.fullScan = true
		}
		n, err := w.batch(io)
		if err != nil {
			if io.Err() != nil {
				return
			}
			delay := bo.Full(failures)
			failures++
			w.log.Warn("batch abandoned", "err", err, "retry_in", delay)
			if !backoff.Sleep(stop.Done(), delay) {
				return
			}
			continue
		}
		failures = 0
		if n == w.r.cfg.BatchSize {
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
		w.fullScan = true // a wake-up may be for a row below low
	}
}

// batch claims, publishes and marks one batch in one transaction, and
// returns how many rows it claimed.
func (w *worker) batch(ctx context.Context) (int, error) {
	start := time.Now()
	w.keyedDone = false
	tx, err := w.r.pool.Begin(ctx)
	if err != nil {
		w.r.m.dbErrors.Inc()
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = tx.Rollback(rctx) // a no-op after Commit
	}()
	from := w.low
	if w.fullScan {
		from, w.fullScan, w.lastFull = 0, false, time.Now()
	}
	rows, err := claim(ctx, tx, w.r.cfg.BatchSize, from, w.r.cfg.OrderingPolicy != OrderingSkip)
	if err != nil {
		w.r.m.dbErrors.Inc()
		w.fullScan = true
		return 0, err
	}
	if len(rows) > 0 {
		w.low = rows[0].id
	}
	if len(rows) == 0 {
		return 0, tx.Commit(ctx)
	}
	outs, err := w.publish(ctx, rows)
	if err != nil {
		return 0, err
	}

	var (
		published, failedIDs []int64
		publishedMsgIDs      []string
		errs                 []string
		delays               []int64
		released             int
	)
	for i, o := range outs {
		switch o.state {
		case stateOK:
			published = append(published, rows[i].id)
			publishedMsgIDs = append(publishedMsgIDs, rows[i].messageID)
			w.keyedDone = w.keyedDone || rows[i].keyed
		case stateFailed:
			failedIDs = append(failedIDs, rows[i].id)
			errs = append(errs, o.reason+": "+o.msg)
			delays = append(delays, w.r.retry.Equal(rows[i].attempts).Milliseconds())
			w.r.m.failed.WithLabelValues(o.reason).Inc()
			w.log.Warn("publish failed", "id", rows[i].id, "message_id", rows[i].messageID,
				"exchange", rows[i].exchange, "routing_key", rows[i].routingKey,
				"attempt", rows[i].attempts+1, "reason", o.reason, "err", o.msg)
		default:
			released++
		}
	}
	dead, err := mark(ctx, tx, published, failedIDs, errs, delays, w.r.cfg.MaxAttempts)
	if err != nil {
		w.r.m.dbErrors.Inc()
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		w.r.m.dbErrors.Inc()
		return 0, fmt.Errorf("commit: %w", err)
	}
	now := time.Now()
	w.r.m.batches.Inc()
	w.r.m.batchSeconds.Observe(now.Sub(start).Seconds())
	w.r.m.published.Add(float64(len(published)))
	w.r.m.dead.Add(float64(dead))
	for i, o := range outs {
		if o.state == stateOK {
			w.r.m.latency.Observe(now.Sub(rows[i].createdAt).Seconds())
		}
	}
	if dead > 0 {
		w.log.Error("rows parked as dead", "count", dead)
	}
	if w.r.cfg.OnBatch != nil {
		w.r.cfg.OnBatch(BatchResult{Published: publishedMsgIDs, Failed: len(failedIDs), Released: released, CommittedAt: now})
	}
	if released > 0 {
		return len(rows), errors.New("broker connection lost mid-batch; unconfirmed rows released")
	}
	return len(rows), nil
}

// publish sends the batch and reports each row's outcome. An error means
// nothing can be said about the unconfirmed rows (context ended).
func (w *worker) publish(ctx context.Context, rows []claimed) ([]outcome, error) {
	outs := make([]outcome, len(rows))
	msgs := make([]amqp.Publishing, len(rows))
	todo := make([]int, 0, len(rows))
	for i := range rows {
		row := &rows[i]
		if len(row.payload) > w.r.cfg.MaxPayloadBytes {
			outs[i] = failed(reasonTooLarge, "payload is %d bytes, over max_payload_bytes %d", len(row.payload), w.r.cfg.MaxPayloadBytes)
			continue
		}
		headers, err := decodeHeaders(row.headers)
		if err != nil {
			outs[i] = failed(reasonBadHeaders, "%v", err)
			continue
		}
		ok, err := w.r.broker.exchangeExists(ctx, row.exchange)
		if err != nil {
			if errors.Is(err, ctx.Err()) {
				return nil, err
			}
			continue // broker trouble: leave the row pending, untouched
		}
		if !ok {
			outs[i] = failed(reasonNoExchange, "exchange %q does not exist", row.exchange)
			continue
		}
		msgs[i] = amqp.Publishing{
			Headers:      headers,
			ContentType:  row.contentType,
			DeliveryMode: amqp.Persistent,
			MessageId:    row.messageID,
			Timestamp:    row.createdAt,
			Body:         row.payload,
		}
		todo = append(todo, i)
	}

	lost, err := w.send(ctx, rows, msgs, todo, outs)
	if err != nil {
		return nil, err
	}
	// The broker closed the channel under the batch: a channel error caused
	// by one message. Publish the unconfirmed rows one at a time on fresh
	// channels so that only the culprit is charged.
	for _, i := range lost {
		again, err := w.send(ctx, rows, msgs, []int{i}, outs)
		if err != nil {
			return nil, err
		}
		if len(again) > 0 {
			if !w.r.broker.connected() {
				break // the connection went: release the rest untouched
			}
			outs[i] = failed(reasonChannelClosed, "broker closed the channel: %s", w.closeReason())
		}
	}
	return outs, nil
}

// send publishes rows[todo] pipelined on the worker's channel and waits for
// their confirms. It fills outs for the rows it can judge and returns the
// ones whose confirm was lost because the channel closed.
func (w *worker) send(ctx context.Context, rows []claimed, msgs []amqp.Publishing, todo []int, outs []outcome) (lost []int, err error) {
	if len(todo) == 0 {
		return nil, nil
	}
	ch, err := w.channel(ctx)
	if err != nil {
		return nil, err // nothing sent yet: rows stay pending
	}
	type inflight struct {
		i  int
		dc *amqp.DeferredConfirmation
	}
	sent := make([]inflight, 0, len(todo))
	for k, i := range todo {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, rows[i].exchange, rows[i].routingKey, true, false, msgs[i])
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			lost = append(lost, todo[k:]...)
			break
		}
		sent = append(sent, inflight{i, dc})
	}

	returned := map[string]amqp.Return{}
	timeout := time.NewTimer(w.r.cfg.ConfirmTimeout)
	defer timeout.Stop()
	timedOut := false
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
				return nil, ctx.Err()
			}
		}
	}
	// A basic.return precedes its ack on the wire and the client hands it
	// to w.returns before resolving the confirm, so once every confirm is
	// in, every return for this batch is already buffered.
	for drained := false; !drained; {
		select {
		case ret, ok := <-w.returns:
			if !ok {
				w.returns = nil
				drained = true
				continue
			}
			returned[ret.MessageId] = ret
		default:
			drained = true
		}
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

func failed(reason, format string, args ...any) outcome {
	return outcome{state: stateFailed, reason: reason, msg: fmt.Sprintf(format, args...)}
}

// channel returns the worker's open confirm channel, opening one if needed.
func (w *worker) channel(ctx context.Context) (*amqp.Channel, error) {
	if w.ch != nil && !w.ch.IsClosed() {
		return w.ch, nil
	}
	w.closeChannel()
	ch, err := w.r.broker.channel(ctx)
	if err != nil {
		return nil, err
	}
	w.ch = ch
	w.returns = ch.NotifyReturn(make(chan amqp.Return, 256))
	w.closed = ch.NotifyClose(make(chan *amqp.Error, 1))
	return ch, nil
}

// closeReason reads why the last channel closed, if the broker said.
func (w *worker) closeReason() string {
	if w.closed != nil {
		select {
		case e, ok := <-w.closed:
			if ok && e != nil {
				return e.Error()
			}
		default:
		}
	}
	return "channel closed"
}

func (w *worker) closeChannel() {
	if w.ch != nil {
		_ = w.ch.Close()
	}
	w.ch, w.returns, w.closed = nil, nil, nil
}
