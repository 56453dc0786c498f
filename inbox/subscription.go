package inbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// subscribe consumes the queue on a fresh channel until the channel, the
// connection or the consumer ends, or ctx ends, or an isolation period
// ends (errWiden: subscribe again with the normal prefetch). It reports
// whether it received any message, and whether it got as far as
// consuming (live).
//
// One dispatcher (this goroutine) hands deliveries to Concurrency workers,
// one at a time and only to an idle worker, asking the breaker first: so a
// handler never starts while the breaker is open, and a half-open breaker
// lets exactly one message through. While the breaker is open the
// dispatcher keeps the subscription and the deliveries it holds, unacked:
// a quorum queue charges every message returned unacked one delivery
// against its delivery limit, so returning the prefetched messages at each
// pause would dead-letter innocent ones during a long outage. Deliveries
// the dispatcher holds when it stops are left unacked; closing the channel
// returns them to the queue.
func (c *Consumer) subscribe(ctx context.Context, conn *amqp.Connection, connClosed <-chan *amqp.Error) (received, live bool, err error) {
	c.setStatus("subscribing")
	ch, err := conn.Channel()
	if err != nil {
		return false, false, fmt.Errorf("inbox: open channel: %w", err)
	}
	// Buffered, per the client's rules; both are closed when the channel
	// is, and drained below until then.
	chClosed := ch.NotifyClose(make(chan *amqp.Error, 1))
	cancels := ch.NotifyCancel(make(chan string, 1))
	defer func() {
		_ = ch.Close()
		for range cancels {
		}
	}()
	if err := declareOwnQueues(ch, c.cfg.Queue, c.cfg.RetryDelays); err != nil {
		return false, false, err
	}
	prefetch := c.cfg.Prefetch
	var widen <-chan time.Time // fires when an isolation period ends
	if c.isolated {
		prefetch = 1
		t := time.NewTimer(c.cfg.IsolationPeriod)
		defer t.Stop()
		widen = t.C
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		return false, false, fmt.Errorf("inbox: qos: %w", err)
	}
	tag := consumerTag(c.cfg.Name)
	deliveries, err := ch.Consume(c.cfg.Queue, tag, false, false, false, false, nil)
	if err != nil {
		return false, false, fmt.Errorf("inbox: consume %q: %w", c.cfg.Queue, err)
	}
	live = true
	c.setStatus("")
	c.log.Info("consuming", "consumer_tag", tag, "prefetch", prefetch)
	c.event(Event{Kind: EventSubscribed})
	widening := false

	idle := make(chan *worker, c.cfg.Concurrency)
	var wg sync.WaitGroup
	workers := make([]*worker, c.cfg.Concurrency)
	for i := range workers {
		w := &worker{c: c, id: i, conn: conn, in: make(chan amqp.Delivery, 1)}
		workers[i] = w
		idle <- w
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(ctx, idle)
		}()
	}
	defer func() {
		// Let in-flight messages finish (and be acked) before the channel
		// closes, so a cancelled consumer or a restored prefetch wastes no
		// work.
		for _, w := range workers {
			close(w.in)
		}
		wg.Wait()
		c.br.release()
		c.setStatus("not subscribed")
		c.event(Event{Kind: EventUnsubscribed, Err: err})
	}()

	// stopped maps the end signals to subscribe's result.
	stopped := func(sel int, e *amqp.Error) error {
		switch sel {
		case 0:
			return ctx.Err()
		case 1:
			return connErr(e)
		case 2:
			if e == nil {
				return fmt.Errorf("inbox: channel closed")
			}
			return fmt.Errorf("inbox: channel closed: %w", e)
		}
		return errCancelled
	}
	// startWiden ends an isolation period that passed without a loss. It
	// cancels the consumer and lets the loop hand out what was already
	// received (the client closes deliveries after them), so that
	// subscribing again with the normal prefetch returns nothing unacked
	// to the queue.
	startWiden := func() error {
		widen = nil
		if err := ch.Cancel(tag, false); err != nil {
			return fmt.Errorf("inbox: cancel to restore prefetch: %w", err)
		}
		widening = true
		return nil
	}
	// pause holds the subscription while the breaker is open, then lets
	// it go half-open.
	pause := func() error {
		c.setStatus("paused by the circuit breaker")
		t := time.NewTimer(max(time.Until(c.br.reopenAt().Add(c.cfg.BreakerCooldown)), 0))
		defer t.Stop()
		select {
		case <-ctx.Done():
			return stopped(0, nil)
		case e := <-connClosed:
			return stopped(1, e)
		case e := <-chClosed:
			return stopped(2, e)
		case <-cancels:
			return stopped(3, nil)
		case <-t.C:
		}
		c.br.halfOpen()
		c.setStatus("")
		return nil
	}
	for {
		st, changed := c.br.snapshot()
		if st == BreakerOpen {
			if err := pause(); err != nil {
				return received, true, err
			}
			continue
		}
		var w *worker
		select {
		case <-ctx.Done():
			return received, true, stopped(0, nil)
		case e := <-connClosed:
			return received, true, stopped(1, e)
		case e := <-chClosed:
			return received, true, stopped(2, e)
		case <-cancels:
			return received, true, stopped(3, nil)
		case <-changed:
			continue
		case <-widen:
			if err := startWiden(); err != nil {
				return received, true, err
			}
			continue
		case w = <-idle:
		}
		var d amqp.Delivery
		var ok bool
		select {
		case <-ctx.Done():
			return received, true, stopped(0, nil)
		case e := <-connClosed:
			return received, true, stopped(1, e)
		case e := <-chClosed:
			return received, true, stopped(2, e)
		case <-cancels:
			return received, true, stopped(3, nil)
		case <-changed:
			idle <- w
			continue
		case <-widen:
			idle <- w
			if err := startWiden(); err != nil {
				return received, true, err
			}
			continue
		case d, ok = <-deliveries:
			if !ok {
				if widening {
					c.setIsolated(false)
					return received, true, errWiden
				}
				// The library closes deliveries on a cancel or a closed
				// channel; the notification says which, if it came.
				return received, true, errCancelled
			}
		}
		if !received {
			c.conn.Settled() // the connection proved itself: reconnect backoff starts afresh
			received = true
		}
	admit:
		for {
			ok, st, changed := c.br.admit()
			switch {
			case ok:
				break admit
			case st == BreakerOpen:
				if err := pause(); err != nil {
					return received, true, err // d is requeued when the channel closes
				}
				continue
			}
			select { // half-open: wait for the trial's outcome
			case <-ctx.Done():
				return received, true, stopped(0, nil)
			case e := <-connClosed:
				return received, true, stopped(1, e)
			case e := <-chClosed:
				return received, true, stopped(2, e)
			case <-cancels:
				return received, true, stopped(3, nil)
			case <-changed:
			}
		}
		w.in <- d // w is idle and its buffer empty: never blocks
	}
}

func consumerTag(name string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return name + "-" + hex.EncodeToString(b)
}
