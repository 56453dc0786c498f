package inbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// subscribe consumes the queue on a fresh channel until the channel (and
// with it the connection) or the consumer ends, or ctx ends, or an
// isolation period ends (errWiden: subscribe again with the normal
// prefetch). It reports whether it received any message, and whether it got
// as far as consuming (live).
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
//
// Every wait selects on one context, ended by a watcher with the reason
// the subscription is over (ctx ended, the channel closed, the broker
// cancelled the consumer). A lost connection closes the channel too; the
// caller reads the connection's own notification for its reason.
func (c *Consumer) subscribe(ctx context.Context, conn *amqp.Connection) (received, live bool, err error) {
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
	s := &subscription{c: c, ch: ch}
	if err := s.start(); err != nil {
		return false, false, err
	}
	defer s.stopTimer()
	sctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	go watch(sctx, stop, chClosed, cancels)
	s.ctx = sctx
	if c.cfg.ProbeInterval > 0 {
		probed := make(chan struct{})
		go func() {
			defer close(probed)
			c.watchProgress(sctx, stop, conn)
		}()
		defer func() {
			stop(nil)
			<-probed
		}()
	}

	c.setStatus("")
	c.log.Info("consuming", "consumer_tag", s.tag, "prefetch", s.prefetch)
	c.event(Event{Kind: EventSubscribed})
	stopWorkers := s.startWorkers(ctx, conn)
	defer func() {
		stopWorkers()
		c.br.release()
		c.setStatus("not subscribed")
		c.event(Event{Kind: EventUnsubscribed, Err: err})
	}()
	err = s.dispatch()
	return s.received, true, err
}

// watch ends ctx with the reason the subscription is over: the channel
// closed (with the broker's error, if any) or the broker cancelled the
// consumer. ctx also ends with its parent, or when subscribe returns.
func watch(ctx context.Context, stop context.CancelCauseFunc, chClosed <-chan *amqp.Error, cancels <-chan string) {
	select {
	case <-ctx.Done():
	case e, ok := <-chClosed:
		if ok && e != nil {
			stop(fmt.Errorf("inbox: channel closed: %w", e))
		} else {
			stop(errors.New("inbox: channel closed"))
		}
	case <-cancels:
		stop(errCancelled)
	}
}

// subscription is one consume on one channel.
type subscription struct {
	c          *Consumer
	ctx        context.Context // ends with the reason the subscription is over
	ch         *amqp.Channel
	tag        string
	prefetch   int
	deliveries <-chan amqp.Delivery
	timer      *time.Timer      // the isolation period, if isolated
	widen      <-chan time.Time // fires when the isolation period ends
	widening   bool             // cancelled to restore the prefetch
	idle       chan *worker
	received   bool
}

// start declares the consumer's own queues, sets the prefetch (1 while
// isolated) and starts consuming.
func (s *subscription) start() error {
	cfg := s.c.cfg
	if err := declareOwnQueues(s.ch, cfg.Queue, cfg.RetryDelays); err != nil {
		return err
	}
	s.prefetch = cfg.Prefetch
	if s.c.isolated {
		s.prefetch = 1
		s.timer = time.NewTimer(cfg.IsolationPeriod)
		s.widen = s.timer.C
	}
	if err := s.ch.Qos(s.prefetch, 0, false); err != nil {
		return fmt.Errorf("inbox: qos: %w", err)
	}
	s.tag = consumerTag(cfg.Name)
	var err error
	s.deliveries, err = s.ch.Consume(cfg.Queue, s.tag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("inbox: consume %q: %w", cfg.Queue, err)
	}
	return nil
}

func (s *subscription) stopTimer() {
	if s.timer != nil {
		s.timer.Stop()
	}
}

// startWorkers starts Concurrency idle workers; the function it returns
// lets in-flight messages finish (and be acked) before the channel closes,
// so a cancelled consumer or a restored prefetch wastes no work.
func (s *subscription) startWorkers(ctx context.Context, conn *amqp.Connection) (stop func()) {
	n := s.c.cfg.Concurrency
	s.idle = make(chan *worker, n)
	var wg sync.WaitGroup
	workers := make([]*worker, n)
	for i := range workers {
		w := &worker{c: s.c, id: i, conn: conn, in: make(chan amqp.Delivery, 1)}
		workers[i] = w
		s.idle <- w
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(ctx, s.idle)
		}()
	}
	return func() {
		for _, w := range workers {
			close(w.in)
		}
		wg.Wait()
	}
}

// dispatch hands each delivery to an idle worker once the breaker admits
// it, until the subscription is over.
func (s *subscription) dispatch() error {
	for {
		if err := s.pauseWhileOpen(); err != nil {
			return err
		}
		w, err := s.idleWorker()
		if err != nil {
			return err
		}
		if w == nil {
			continue // the breaker changed: look again
		}
		d, err := s.delivery(w)
		if err != nil {
			return err
		}
		if d == nil {
			continue // w went back to idle
		}
		if !s.received {
			s.c.conn.Settled() // the connection proved itself: reconnect backoff starts afresh
			s.received = true
		}
		if err := s.admit(); err != nil {
			return err // d is requeued when the channel closes
		}
		w.in <- *d // w is idle and its buffer empty: never blocks
	}
}

// over is the reason the subscription ended.
func (s *subscription) over() error { return context.Cause(s.ctx) }

// pauseWhileOpen holds the subscription while the breaker is open, then
// lets it go half-open.
func (s *subscription) pauseWhileOpen() error {
	c := s.c
	if st, _ := c.br.snapshot(); st != BreakerOpen {
		return nil
	}
	c.setStatus("paused by the circuit breaker")
	t := time.NewTimer(max(time.Until(c.br.reopenAt().Add(c.cfg.BreakerCooldown)), 0))
	defer t.Stop()
	select {
	case <-s.ctx.Done():
		return s.over()
	case <-t.C:
	}
	c.br.halfOpen()
	c.setStatus("")
	return nil
}

// idleWorker waits for a worker to be free. It returns nil, nil when the
// breaker changed or the isolation period ended meanwhile: look again.
func (s *subscription) idleWorker() (*worker, error) {
	_, changed := s.c.br.snapshot()
	select {
	case <-s.ctx.Done():
		return nil, s.over()
	case <-changed:
		return nil, nil
	case <-s.widen:
		return nil, s.startWiden()
	case w := <-s.idle:
		return w, nil
	}
}

// delivery waits for the next delivery for w. It gives w back (and returns
// nil, nil) when the breaker changed or the isolation period ended first.
func (s *subscription) delivery(w *worker) (*amqp.Delivery, error) {
	_, changed := s.c.br.snapshot()
	select {
	case <-s.ctx.Done():
		return nil, s.over()
	case <-changed:
		s.idle <- w
		return nil, nil
	case <-s.widen:
		s.idle <- w
		return nil, s.startWiden()
	case d, ok := <-s.deliveries:
		if ok {
			return &d, nil
		}
		if s.widening {
			s.c.setIsolated(false)
			return nil, errWiden
		}
		// The library closes deliveries on a cancel or a closed channel;
		// the watcher says which, if it has heard.
		if s.ctx.Err() != nil {
			return nil, s.over()
		}
		return nil, errCancelled
	}
}

// startWiden ends an isolation period that passed without a loss. It
// cancels the consumer and lets the dispatcher hand out what was already
// received (the client closes deliveries after them), so that subscribing
// again with the normal prefetch returns nothing unacked to the queue.
func (s *subscription) startWiden() error {
	s.widen = nil
	if err := s.ch.Cancel(s.tag, false); err != nil {
		return fmt.Errorf("inbox: cancel to restore prefetch: %w", err)
	}
	s.widening = true
	return nil
}

// admit asks the breaker to let the next delivery through, pausing while
// it is open and waiting for a half-open trial's outcome.
func (s *subscription) admit() error {
	for {
		ok, st, changed := s.c.br.admit()
		switch {
		case ok:
			return nil
		case st == BreakerOpen:
			if err := s.pauseWhileOpen(); err != nil {
				return err
			}
			continue
		}
		select { // half-open: wait for the trial's outcome
		case <-s.ctx.Done():
			return s.over()
		case <-changed:
		}
	}
}

func consumerTag(name string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return name + "-" + hex.EncodeToString(b)
}
