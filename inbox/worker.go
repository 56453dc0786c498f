package inbox

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
)

// insertInbox claims a message for this consumer. The primary key
// (consumer, message_id) makes a second copy insert nothing; a copy racing
// an uncommitted first one waits on the key and then sees its outcome.
// %s is the table.
const insertInbox = `INSERT INTO %s (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`

var errNoMessageID = errors.New("message has no message-id: it cannot be deduplicated, so it is never processed")

// worker handles deliveries one at a time. It owns a confirm-mode channel
// for its retry and dead-letter copies, so a basic.return on it belongs to
// its one publish in flight.
type worker struct {
	c    *Consumer
	id   int
	conn *amqp.Connection
	in   chan amqp.Delivery

	pub     *amqp.Channel
	returns chan amqp.Return
}

func (w *worker) run(ctx context.Context, idle chan<- *worker) {
	defer w.closePub()
	for d := range w.in {
		w.handle(ctx, d)
		idle <- w
	}
}

// outcome is what became of one attempt.
type outcome int

const (
	applied outcome = iota
	duplicate
	failed
)

// handle takes one delivery to its end: acked after commit, acked as a
// duplicate, acked after a confirmed retry or dead-letter copy, or left
// unacked (shutdown) or requeued (copy not confirmed).
func (w *worker) handle(ctx context.Context, d amqp.Delivery) {
	c := w.c
	m := newMessage(d, fromRetryQueue(d, c.cfg.Queue))
	ctx, span := c.startProcess(ctx, d, m)
	defer span.End()
	if d.MessageId == "" {
		m.Attempt = 1
		w.forward(ctx, d, m, errNoMessageID, DeadReasonNoMessageID)
		return
	}
	out, err := w.apply(ctx, m)
	if ctx.Err() != nil && out == failed {
		// Shutting down: leave it unacked; the broker gives it back when
		// the channel closes. It costs the message no attempt.
		c.br.release()
		return
	}
	switch out {
	case applied:
		c.br.record(true)
		c.m.processed.Inc()
		ackErr := d.Ack(false)
		w.logAck(m, ackErr)
		c.report(ctx, Event{Kind: EventApplied, MessageID: m.ID, Attempt: m.Attempt, AckErr: ackErr})
	case duplicate:
		c.br.record(true)
		c.m.duplicates.Inc()
		ackErr := d.Ack(false)
		// Info, the default level: an operator sees deduplication happen
		// (outboxrelay_inbox_duplicates_total counts it too).
		c.log.Info("duplicate message recognised by the inbox table: acked, handler not called", "message_id", m.ID, "attempt", m.Attempt)
		w.logAck(m, ackErr)
		c.report(ctx, Event{Kind: EventDuplicate, MessageID: m.ID, Attempt: m.Attempt, AckErr: ackErr})
	default:
		switch {
		case IsPermanent(err):
			w.forward(ctx, d, m, err, DeadReasonPermanent)
		case m.Attempt >= c.cfg.MaxAttempts:
			w.forward(ctx, d, m, err, DeadReasonMaxAttempts)
		default:
			w.forward(ctx, d, m, err, "")
		}
	}
}

func (w *worker) logAck(m Message, err error) {
	if err != nil {
		w.c.log.Warn("ack failed: the message will be redelivered and recognised as a duplicate",
			"message_id", m.ID, "err", err)
	}
}

// apply runs the inbox insert and the handler in one transaction.
func (w *worker) apply(ctx context.Context, m Message) (outcome, error) {
	c := w.c
	tx, err := c.cfg.DB.Begin(ctx)
	if err != nil {
		return failed, fmt.Errorf("inbox: begin: %w", err)
	}
	// After a commit this is a no-op. WithoutCancel: a rollback must reach
	// the server even when ctx ended, or the connection is discarded.
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	tag, err := tx.Exec(ctx, c.insertSQL, c.cfg.Name, m.ID)
	if err != nil {
		return failed, fmt.Errorf("inbox: insert inbox row: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return duplicate, nil
	}
	if err := w.callHandler(ctx, tx, m); err != nil {
		return failed, err
	}
	if err := tx.Commit(ctx); err != nil {
		// Possibly committed after all (connection lost during COMMIT):
		// the retry copy will then be recognised as a duplicate.
		return failed, fmt.Errorf("inbox: commit: %w", err)
	}
	if h := c.cfg.hooks; h != nil && h.afterCommit != nil {
		h.afterCommit(m)
	}
	return applied, nil
}

// callHandler runs the handler under HandlerTimeout and turns a panic into
// a transient error: one bad message must not crash the process (and a
// crash would only bring it back).
func (w *worker) callHandler(ctx context.Context, tx pgx.Tx, m Message) (err error) {
	hctx, cancel := context.WithTimeout(ctx, w.c.cfg.HandlerTimeout)
	defer cancel()
	start := time.Now()
	defer func() {
		w.c.m.handlerSeconds.Observe(time.Since(start).Seconds())
		if r := recover(); r != nil {
			w.c.log.Error("handler panicked", "message_id", m.ID, "attempt", m.Attempt,
				"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = fmt.Errorf("inbox: handler panicked: %v", r)
		}
	}()
	err = w.c.cfg.Handler(hctx, tx, m)
	if err != nil && hctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		err = fmt.Errorf("inbox: handler timed out after %s: %w", w.c.cfg.HandlerTimeout, err)
	}
	return err
}

// forward publishes a copy of d to a retry queue (deadReason empty) or to
// the dead-letter queue, waits for the broker's confirm, then acks d. If
// the copy is not confirmed, d is requeued instead: it is retried at the
// same attempt, never lost.
//
// A copy is measured before it goes out, because a header frame over the
// connection's frame_max makes the broker close the connection: d would
// come back, fail and be forwarded the same way, for ever. A retry copy
// that does not fit is dead-lettered instead (a retry must show the
// handler the message as it was, so it is never trimmed); a dead-letter
// copy that does not fit loses its largest original headers.
func (w *worker) forward(ctx context.Context, d amqp.Delivery, m Message, cause error, deadReason string) {
	c := w.c
	budget := headerBudget(w.conn.Config.FrameSize)
	queue := DeadQueue(c.cfg.Queue)
	var delay time.Duration
	var p amqp.Publishing
	if deadReason == "" {
		delay = c.cfg.retryDelay(m.Attempt)
		queue = RetryQueue(c.cfg.Queue, delay)
		p = copyOf(d, m, w.ownHeaders(m, cause, ""))
		if budget >= 0 && headerPayloadSize(p) > budget {
			deadReason, queue = DeadReasonHeadersTooLarge, DeadQueue(c.cfg.Queue)
		}
	}
	if deadReason != "" {
		p = copyOf(d, m, w.ownHeaders(m, cause, deadReason))
		if _, ok := fit(&p, budget, isOwnHeader); !ok {
			w.rejectUnfit(ctx, d, m, cause, deadReason)
			return
		}
	}
	err := w.publish(ctx, queue, p)
	if err != nil {
		// The copy may or may not be in the queue; requeueing the original
		// at worst makes a duplicate, which the inbox absorbs.
		c.br.record(false)
		c.m.forwardFailures.Inc()
		nackErr := d.Nack(false, true)
		c.log.Error("could not forward message: requeued", "message_id", m.ID, "attempt", m.Attempt,
			"to_queue", queue, "err", err)
		c.report(ctx, Event{Kind: EventRequeued, MessageID: m.ID, Attempt: m.Attempt, Err: err, AckErr: nackErr})
		return
	}
	c.br.record(messageFault(deadReason))
	ackErr := d.Ack(false)
	w.logAck(m, ackErr)
	if deadReason == "" {
		c.m.retried.Inc()
		c.log.Warn("message failed: retrying", "message_id", m.ID, "attempt", m.Attempt,
			"retry_in", delay, "err", cause)
		c.report(ctx, Event{Kind: EventRetried, MessageID: m.ID, Attempt: m.Attempt, Err: cause, AckErr: ackErr})
		return
	}
	c.m.deadLettered.WithLabelValues(deadReason).Inc()
	c.log.Error("message dead-lettered", "message_id", m.ID, "attempt", m.Attempt,
		"reason", deadReason, "to_queue", queue, "err", cause, "trimmed", p.Headers[HeaderTrimmed])
	c.report(ctx, Event{Kind: EventDeadLettered, MessageID: m.ID, Attempt: m.Attempt, Err: cause,
		DeadReason: deadReason, AckErr: ackErr})
}

// messageFault reports whether a dead-letter reason is the message's fault
// rather than a sign of a sick dependency, for the breaker. A permanent
// error is; a transient failure is not, even when its copy was too large
// to retry.
func messageFault(deadReason string) bool {
	return deadReason == DeadReasonPermanent || deadReason == DeadReasonNoMessageID
}

// ownHeaders are the x-inbox-* headers of a retry copy (deadReason empty)
// or a dead-letter copy of m.
func (w *worker) ownHeaders(m Message, cause error, deadReason string) amqp.Table {
	h := amqp.Table{
		HeaderAttempts:  int64(m.Attempt),
		HeaderLastError: truncate(cause.Error(), maxErrorHeader),
	}
	if deadReason != "" {
		h[HeaderDeadReason] = deadReason
		h[HeaderConsumer] = w.c.cfg.Name
	}
	if deadReason == DeadReasonNoMessageID {
		h[HeaderAttempts] = int64(0)
	}
	return h
}

// rejectUnfit handles a dead-letter copy that does not fit in a frame even
// without its original headers (a frame_max near RabbitMQ's 4096 minimum
// and long names): d is rejected without requeue, so the broker moves it,
// as it is, to the dead-letter queue through the main queue's
// dead-letter arguments. Nothing of ours travels with it; the log says why.
func (w *worker) rejectUnfit(ctx context.Context, d amqp.Delivery, m Message, cause error, deadReason string) {
	c := w.c
	c.br.record(messageFault(deadReason))
	rejectErr := d.Reject(false)
	c.m.deadLettered.WithLabelValues(deadReason).Inc()
	c.log.Error("message dead-lettered by rejection: even a trimmed copy would not fit in a frame",
		"message_id", m.ID, "attempt", m.Attempt, "reason", deadReason, "frame_size", w.conn.Config.FrameSize,
		"err", cause)
	c.report(ctx, Event{Kind: EventDeadLettered, MessageID: m.ID, Attempt: m.Attempt, Err: cause,
		DeadReason: deadReason, AckErr: rejectErr})
}

// publish sends p to queue through the default exchange, mandatory, and
// waits for the confirm. A basic.return arrives before its confirm, so
// once the confirm is in, any return for this publish is in w.returns.
func (w *worker) publish(ctx context.Context, queue string, p amqp.Publishing) error {
	if w.pub == nil || w.pub.IsClosed() {
		w.closePub()
		ch, err := w.conn.Channel()
		if err != nil {
			return fmt.Errorf("open channel: %w", err)
		}
		if err := ch.Confirm(false); err != nil {
			_ = ch.Close()
			return fmt.Errorf("confirm mode: %w", err)
		}
		w.pub, w.returns = ch, ch.NotifyReturn(make(chan amqp.Return, 1))
	}
	for drained := false; !drained; { // a return left by an earlier, timed-out publish
		select {
		case <-w.returns:
		default:
			drained = true
		}
	}
	cctx, cancel := context.WithTimeout(ctx, w.c.cfg.ConfirmTimeout)
	defer cancel()
	dc, err := w.pub.PublishWithDeferredConfirmWithContext(cctx, "", queue, true, false, p)
	if err != nil {
		return fmt.Errorf("publish to %q: %w", queue, err)
	}
	acked, err := dc.WaitContext(cctx)
	if err != nil {
		// No answer in time: the channel's sequence is now uncertain.
		w.closePub()
		return fmt.Errorf("publish to %q: no confirm: %w", queue, err)
	}
	if !acked {
		return fmt.Errorf("publish to %q: nacked by the broker", queue)
	}
	select {
	case r := <-w.returns:
		return fmt.Errorf("publish to %q: returned: %d %s", queue, r.ReplyCode, r.ReplyText)
	default:
	}
	return nil
}

func (w *worker) closePub() {
	if w.pub == nil {
		return
	}
	_ = w.pub.Close()
	for range w.returns { // closed by Close; drain so the client never blocks
	}
	w.pub, w.returns = nil, nil
}
