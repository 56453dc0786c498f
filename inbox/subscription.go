package inbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// subscribe consumes the queue on a fresh channel until the channel, the
// connection or the consumer ends, ctx ends, or the breaker opens
// (errPaused). It reports whether it received any message.
//
// One dispatcher (this goroutine) hands deliveries to Concurrency workers,
// one at a time and only to an idle worker, asking the breaker first: so a
// handler never starts while the breaker is open, and a half-open breaker
// lets exactly one message through. Deliveries the dispatcher holds when it
// stops are left unacked; closing the channel returns them to the queue.
func (c *Consumer) subscribe(ctx context.Context, conn *amqp.Connection, connClosed <-chan *amqp.Error) (received bool, err error) {
	c.setStatus("subscribing")
	ch, err := conn.Channel()
	if err != nil {
		return false, fmt.Errorf("inbox: open channel: %w", err)
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
		return false, err
	}
	if err := ch.Qos(c.cfg.Prefetch, 0, false); err != nil {
		return false, fmt.Errorf("inbox: qos: %w", err)
	}
	tag := consumerTag(c.cfg.Name)
	deliveries, err := ch.Consume(c.cfg.Queue, tag, false, false, false, false, nil)
	if err != nil {
		return false, fmt.Errorf("inbox: consume %q: %w", c.cfg.Queue, err)
	}
	c.setStatus("")
	c.log.Info("consuming", "consumer_tag", tag)
	c.event(Event{Kind: EventSubscribed})

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
		// closes, so a pause or a cancelled consumer wastes no work.
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
	for {
		st, changed := c.br.snapshot()
		if st == BreakerOpen {
			return received, errPaused
		}
		var w *worker
		select {
		case <-ctx.Done():
			return received, stopped(0, nil)
		case e := <-connClosed:
			return received, stopped(1, e)
		case e := <-chClosed:
			return received, stopped(2, e)
		case <-cancels:
			return received, stopped(3, nil)
		case <-changed:
			continue
		case w = <-idle:
		}
		var d amqp.Delivery
		var ok bool
		select {
		case <-ctx.Done():
			return received, stopped(0, nil)
		case e := <-connClosed:
			return received, stopped(1, e)
		case e := <-chClosed:
			return received, stopped(2, e)
		case <-cancels:
			return received, stopped(3, nil)
		case <-changed:
			idle <- w
			continue
		case d, ok = <-deliveries:
			if !ok {
				// The library closes deliveries on a cancel or a closed
				// channel; the notification says which, if it came.
				return received, errCancelled
			}
		}
		received = true
	admit:
		for {
			ok, st, changed := c.br.admit()
			switch {
			case ok:
				break admit
			case st == BreakerOpen:
				return received, errPaused // d is requeued when the channel closes
			}
			select { // half-open: wait for the trial's outcome
			case <-ctx.Done():
				return received, stopped(0, nil)
			case e := <-connClosed:
				return received, stopped(1, e)
			case e := <-chClosed:
				return received, stopped(2, e)
			case <-cancels:
				return received, stopped(3, nil)
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
