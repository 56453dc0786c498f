package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/internal/backoff"
)

// worker runs claim -> publish -> mark -> commit loops on its own AMQP
// channel. Workers overlap: while one waits for confirms, another claims
// or commits. This file is the loop and the claim cursors; plan.go plans
// and sends a batch, confirmch.go is the channel, blame.go who pays.
type worker struct {
	r   *Relay
	id  int
	log *slog.Logger

	cc *confirmChannel // nil until the first send, and after a fault
	// exclusive is set while the worker publishes a batch with a suspected
	// row, alone on the connection (Relay.publishMu).
	exclusive bool

	// low is where the next claim of unkeyed rows starts while draining
	// (the first unkeyed id of the previous batch); fromStart forces a
	// claim from id 0, so a row committed below low is not passed over.
	low       int64
	fromStart bool
	lastFull  time.Time

	// limit is how many rows the next claim asks for: BatchSize, or fewer
	// while rows are too large for the byte budget to keep a whole claim
	// (see sizeClaim). asked is what the last claim asked for.
	limit, asked int

	// afterKey is where the next claim starts visiting ordering keys: the
	// last key of the previous batch, so keys take turns.
	afterKey string

	// keysPending is false while no ordering key has unpublished rows (as
	// the last claim's probe saw), and the worker then sends the plain
	// unkeyed claim. Any wake-up sets it, since a keyed row may have come.
	keysPending bool

	// claimAgain is set when the next claim may find rows at once, with
	// no wake-up: the batch published a keyed row (its key's next row is
	// now the head), keys appeared while the claim looked at unkeyed rows
	// only, or the byte budget cut the batch short of what it claimed.
	claimAgain bool

	// spans are the current batch's publish spans (trace.go); nil while
	// tracing is off.
	spans *publishSpans
}

// run loops until stop ends; ioctx carries the I/O of a batch in flight,
// so a batch can finish after stop during a graceful shutdown.
func (w *worker) run(stop, ioctx context.Context) {
	defer w.closeChannel()
	bo := backoff.Policy{Base: w.r.cfg.ReconnectMin, Max: w.r.cfg.ReconnectMax}
	failures := 0
	poll := time.NewTimer(w.r.cfg.PollInterval)
	defer poll.Stop()
	woken := false // the batch below follows a notification
	for stop.Err() == nil {
		// Wait for a usable broker (connected, not blocked by an alarm)
		// before claiming, so rows are never held in a transaction while
		// nothing can be sent.
		if _, err := w.r.broker.ready(stop); err != nil {
			return
		}
		if time.Since(w.lastFull) >= w.r.cfg.RescanInterval {
			w.fromStart = true
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
		if n >= w.asked {
			w.r.signal() // more is likely waiting: bring another worker in
			woken = false
			continue
		}
		if w.claimAgain {
			woken = false
			continue // the keys' next rows may now be heads
		}
		var ok bool
		if woken, ok = w.wait(stop, poll, woken && n == 0); !ok {
			return
		}
		// A wake-up may be for a row below low, or for a keyed row.
		w.fromStart, w.keysPending = true, true
	}
}

// wait waits for a notification or the poll interval, and reports whether
// a notification ended it; ok is false when stop ended. emptyWake says
// the last claim followed a notification and found nothing: the next
// notification is then honoured no sooner than emptyWakeHoldoff later.
func (w *worker) wait(stop context.Context, poll *time.Timer, emptyWake bool) (woken, ok bool) {
	if emptyWake {
		w.r.m.emptyWakeups.Inc()
		if !backoff.Sleep(stop.Done(), emptyWakeHoldoff) {
			return false, false
		}
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
		return false, false
	case <-w.r.wake:
		return true, true
	case <-poll.C:
		return false, true
	}
}

// emptyWakeHoldoff is how long a worker ignores notifications after one
// that found nothing to claim. Any role may NOTIFY the relay's channel; a
// loop of them would otherwise keep every worker claiming back to back. A
// genuine insert wakes a worker that then claims it, and is never held.
const emptyWakeHoldoff = 20 * time.Millisecond

// batch claims, publishes and marks one batch in one transaction, and
// returns how many rows it claimed.
func (w *worker) batch(ctx context.Context) (int, error) {
	start := time.Now()
	w.claimAgain = false
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
	b := newBatch(rows)
	brokerErr := w.publish(ctx, b)
	if brokerErr != nil && !errors.Is(brokerErr, errConnectionLost) && !errors.Is(brokerErr, errBrokerStalled) {
		return 0, brokerErr // context ended: roll back, nothing is known
	}
	m := w.settle(b)
	dead, err := mark(ctx, tx, m, w.r.cfg.MaxAttempts)
	if err != nil {
		w.r.m.dbErrors.Inc()
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		w.r.m.dbErrors.Inc()
		return 0, fmt.Errorf("commit: %w", err)
	}
	w.spans.finish(b.rows, b.outs)
	w.report(start, b, m, dead)
	return len(rows), brokerErr
}

// claimRows claims the next batch (see claim) in tx and loads the payloads
// it did not bring inline.
func (w *worker) claimRows(ctx context.Context, tx pgx.Tx) ([]claimed, error) {
	from := w.low
	if w.fromStart {
		from, w.fromStart, w.lastFull = 0, false, time.Now()
	}
	cfg := &w.r.cfg
	if w.limit == 0 {
		w.limit = cfg.BatchSize
	}
	w.asked = w.limit
	unkeyedOnly := !w.keysPending
	rows, keys, err := claim(ctx, tx, claimArgs{
		keyedRows:   w.limit,
		afterKey:    w.afterKey,
		blockOnDead: cfg.OrderingPolicy != OrderingSkip,
		runMax:      w.limit,
		fromID:      from,
		batchRows:   w.limit,
		maxPayload:  cfg.MaxPayloadBytes,
		maxBytes:    cfg.MaxBatchBytes,
		unkeyedOnly: unkeyedOnly,
	})
	if err != nil {
		w.fromStart, w.keysPending = true, true
		return nil, err
	}
	w.keysPending = keys
	// Keys appeared while this claim looked at unkeyed rows only: claim
	// again at once, with the keyed half.
	w.claimAgain = unkeyedOnly && keys
	if err := loadPayloads(ctx, tx, rows, cfg.MaxPayloadBytes, cfg.MaxBatchBytes); err != nil {
		return nil, err
	}
	w.sizeClaim(rows)
	w.advanceCursors(rows)
	return rows, nil
}

// sizeClaim sets how many rows the next claim asks for, from what the
// byte budget let this one keep. The database works for every row a
// claim takes (it locks it and computes its headers' text length,
// rowExtra), and rows past the budget's cut are only released again: 500
// rows claimed for the 4 a budget keeps cost it 125 times the work, and
// with 256 KiB headers a claim took a second. So after a batch cut at k
// rows the next claim asks for 2k; a batch not cut doubles the limit back
// towards BatchSize. Rows too large to load at all (dead for their size)
// are kept: the batch parks them. A cut batch left rows due at once, so
// the worker claims again without waiting for a wake-up.
func (w *worker) sizeClaim(rows []claimed) {
	maxPayload := w.r.cfg.MaxPayloadBytes
	kept := slices.IndexFunc(rows, func(c claimed) bool { return c.payload == nil && c.size <= maxPayload })
	if kept < 0 {
		w.limit = min(2*w.limit, w.r.cfg.BatchSize)
		return
	}
	w.limit = min(max(2*kept, 1), w.r.cfg.BatchSize)
	w.claimAgain = true
}

// publish sends the batch beside the other workers, or alone when it
// holds a suspected row: a lone row in flight is then the only message in
// flight, and if the broker kills the connection it is the row to blame.
func (w *worker) publish(ctx context.Context, b *batch) error {
	w.exclusive = slices.ContainsFunc(b.rows, func(c claimed) bool { return c.suspected })
	if w.exclusive {
		w.r.publishMu.Lock()
		defer w.r.publishMu.Unlock()
	} else {
		w.r.publishMu.RLock()
		defer w.r.publishMu.RUnlock()
	}
	return w.plan(ctx, b)
}

// marks is what a batch writes back: rows published, charged, deferred,
// suspected, and how many it left untouched.
type marks struct {
	published       []int64
	publishedMsgIDs []string
	failures        []failure
	deferred        []failure // not charged: attempts stay, the error and the delay are noted
	suspected       []int64
	released        int
	// deletePublished deletes the published rows instead of marking them
	// (Config.DeletePublished).
	deletePublished bool
}

// settle sorts the batch's rows by outcome, for mark.
func (w *worker) settle(b *batch) marks {
	m := marks{deletePublished: w.r.cfg.DeletePublished}
	for i, o := range b.outs {
		row := &b.rows[i]
		switch o.state {
		case statePublished:
			m.published = append(m.published, row.id)
			m.publishedMsgIDs = append(m.publishedMsgIDs, row.messageID)
			w.claimAgain = w.claimAgain || row.key != ""
		case stateFailed:
			parks := parksAtOnce(o.reason, o.permanent, row.attempts, w.r.cfg.MaxAttempts, w.r.cfg.ParkUnroutable)
			m.failures = append(m.failures, failure{
				id: row.id, err: o.reason + ": " + o.msg, permanent: parks,
				delayMS: w.r.retry.Equal(row.attempts).Milliseconds(),
			})
			w.r.m.failed.WithLabelValues(o.reason).Inc()
			w.log.Warn("publish failed", "id", row.id, "message_id", row.messageID,
				"exchange", row.exchange, "routing_key", row.routingKey, "ordering_key", row.key,
				"attempt", row.attempts+1, "reason", o.reason, "permanent", o.permanent, "parked", parks, "err", o.msg)
		case stateDeferred:
			m.deferred = append(m.deferred, failure{id: row.id, err: o.reason + ": " + o.msg,
				delayMS: w.r.retry.Equal(row.attempts).Milliseconds()})
			m.released++
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
func (w *worker) report(start time.Time, b *batch, m marks, dead []int64) {
	now := time.Now()
	w.r.m.batches.Inc()
	w.r.m.batchSeconds.Observe(now.Sub(start).Seconds())
	w.r.m.published.Add(float64(len(m.published)))
	w.r.m.dead.Add(float64(len(dead)))
	w.r.progress.published.Add(int64(len(m.published)))
	w.r.progress.failed.Add(int64(len(m.failures)))
	w.r.m.suspected.Add(float64(len(m.suspected)))
	for i, o := range b.outs {
		if o.state == statePublished {
			w.r.m.latency.Observe(now.Sub(b.rows[i].createdAt).Seconds())
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
		w.r.cfg.OnBatch(BatchResult{Published: m.publishedMsgIDs, Failed: len(m.failures), Deferred: len(m.deferred),
			Released: m.released, CommittedAt: now})
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
