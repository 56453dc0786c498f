package inbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// errNoProgress ends a subscription whose node was left because it cannot
// reach the queue (see watchProgress).
var errNoProgress = errors.New("inbox: left the broker node: it cannot reach the queue")

// errNoConsumer is a probe's answer from a node that cannot reach the
// queue's leader: RabbitMQ answers a quorum queue's passive declare with
// zero messages and zero consumers when its internal query to the leader
// fails or times out (250 ms), where the leader would count this consumer.
var errNoConsumer = errors.New("the queue reports no consumer while this one is subscribed: the node cannot reach the queue's leader")

// stalledStatus is what Ready says while a single-URL consumer's node
// makes no progress.
const stalledStatus = "the broker node cannot reach the queue"

// watchProgress probes, while a subscription on conn lives (until ctx
// ends), whether conn's node still reaches the queue: every ProbeInterval
// a passive queue.declare on a channel of its own, one probe in flight at a
// time. When the probes have failed (an error, no answer, or no consumer
// counted) for ProbeTimeout, the node makes no progress: the consumer
// leaves it for the next URL (amqpconn.Manager.Abandon) and ends the
// subscription with errNoProgress. With nowhere to go it stays, says so
// in Ready, and keeps probing at the same pace (no busy loop) until a
// probe passes.
func (c *Consumer) watchProgress(ctx context.Context, stop context.CancelCauseFunc, conn *amqp.Connection) {
	var pch *amqp.Channel         // the probes' channel, opened by the first probe
	var inflight chan probeAnswer // the running probe's answer; nil when none runs
	defer func() {
		switch {
		case inflight != nil:
			// The probe ends when its RPC does, or with the connection; it
			// closes the channel it holds itself.
			go func(answer <-chan probeAnswer) {
				if a := <-answer; a.ch != nil {
					_ = a.ch.Close()
				}
			}(inflight)
		case pch != nil:
			_ = pch.Close()
		}
	}()
	tick := time.NewTicker(c.cfg.ProbeInterval)
	defer tick.Stop()
	var (
		lastOK     = time.Now() // subscribing proved the node reached the queue
		failure    error        // the last probe's failure; nil after a pass
		probeStart time.Time
		stalled    bool // reported with nowhere to go
	)
	for {
		select {
		case <-ctx.Done():
			return
		case a := <-inflight:
			inflight, pch, failure = nil, a.ch, a.err
			if a.err == nil {
				lastOK = time.Now()
				if stalled {
					stalled = false
					c.log.Info("broker node reaches the queue again")
					c.swapStatus(stalledStatus, "")
				}
				continue
			}
		case <-tick.C:
			if inflight == nil {
				inflight, probeStart = make(chan probeAnswer, 1), time.Now()
				go func(ch *amqp.Channel, answer chan<- probeAnswer) { answer <- c.probe(conn, ch) }(pch, inflight)
				pch = nil // the probe owns it until it answers
			}
		}
		why := failure
		if inflight != nil && time.Since(probeStart) >= c.cfg.ProbeTimeout {
			why = fmt.Errorf("no answer to a passive queue.declare for %s", time.Since(probeStart).Round(100*time.Millisecond))
		}
		if why == nil || stalled || time.Since(lastOK) < c.cfg.ProbeTimeout {
			continue
		}
		c.m.probeStalls.Inc()
		if c.conn.Abandon(conn, why.Error()) {
			c.m.abandoned.Inc()
			stop(fmt.Errorf("%w: %w", errNoProgress, why))
			return
		}
		stalled = true
		c.log.Warn("broker node makes no progress, and no other URL is listed: staying", "err", why,
			"for", time.Since(lastOK).Round(time.Second))
		c.swapStatus("", stalledStatus)
	}
}

// probeAnswer is a probe's outcome and the channel to probe on next (nil
// when it is closed).
type probeAnswer struct {
	ch  *amqp.Channel
	err error
}

// probe asks conn's node about the queue on ch, opening a channel if ch
// is nil. Every step is an RPC that may never be answered: it runs on its
// own goroutine.
func (c *Consumer) probe(conn *amqp.Connection, ch *amqp.Channel) probeAnswer {
	if ch == nil {
		var err error
		if ch, err = conn.Channel(); err != nil {
			return probeAnswer{err: fmt.Errorf("inbox: probe: open channel: %w", err)}
		}
	}
	q, err := ch.QueueDeclarePassive(c.cfg.Queue, true, false, false, false, nil)
	switch {
	case err != nil:
		if ch.IsClosed() { // a channel exception (NOT_FOUND, say): open another next time
			ch = nil
		}
		return probeAnswer{ch: ch, err: fmt.Errorf("inbox: probe: %w", err)}
	case q.Consumers == 0:
		return probeAnswer{ch: ch, err: errNoConsumer}
	}
	return probeAnswer{ch: ch}
}

// swapStatus sets the status to to if it is from; the dispatcher owns
// the status otherwise.
func (c *Consumer) swapStatus(from, to string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.status == from {
		c.status = to
		c.m.consuming.Set(boolFloat(to == ""))
	}
}
