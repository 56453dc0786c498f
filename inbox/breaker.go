package inbox

import (
	"sync"
	"time"
)

// BreakerState is the circuit breaker's state.
type BreakerState int

// Breaker states; the values are those of the breaker_state metric.
const (
	BreakerClosed   BreakerState = 0 // consuming
	BreakerOpen     BreakerState = 1 // paused for the cooldown
	BreakerHalfOpen BreakerState = 2 // one trial message in flight
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half_open"
	}
	return "unknown"
}

// breaker counts consecutive transient failures. It decides, the
// subscription acts: the dispatcher asks admit before handing a message to
// a worker, and pauses the subscription when the breaker is open.
//
// A permanent error counts as a success here: the system worked, the
// message was bad. Only transient failures (handler errors, timeouts,
// panics, database and forwarding failures) suggest a sick dependency.
type breaker struct {
	threshold int // <= 0: never opens
	onChange  func(BreakerState)

	mu       sync.Mutex
	state    BreakerState
	failures int
	trial    bool // a half-open trial message is in flight
	openedAt time.Time
	changed  chan struct{} // closed and replaced on every change
}

func newBreaker(threshold int, onChange func(BreakerState)) *breaker {
	return &breaker{threshold: threshold, onChange: onChange, changed: make(chan struct{})}
}

// snapshot returns the state and a channel closed at the next change.
func (b *breaker) snapshot() (BreakerState, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state, b.changed
}

// admit reports whether one more message may be handled now: always when
// closed, once at a time when half-open, never when open.
func (b *breaker) admit() (bool, BreakerState, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.state == BreakerClosed:
		return true, b.state, b.changed
	case b.state == BreakerHalfOpen && !b.trial:
		b.trial = true
		return true, b.state, b.changed
	}
	return false, b.state, b.changed
}

// record takes the result of an admitted message.
func (b *breaker) record(ok bool) {
	b.mu.Lock()
	var to BreakerState
	changed := false
	switch b.state {
	case BreakerClosed:
		if ok {
			b.failures = 0
		} else if b.failures++; b.threshold > 0 && b.failures >= b.threshold {
			to, changed = BreakerOpen, true
		}
	case BreakerHalfOpen:
		if b.trial {
			b.trial = false
			b.failures = 0
			to, changed = BreakerClosed, true
			if !ok {
				to = BreakerOpen
			}
		}
	case BreakerOpen:
		// A message admitted before the breaker opened finished late: it
		// neither extends nor shortens the pause.
	}
	if changed {
		b.set(to)
	}
	b.mu.Unlock()
	if changed && b.onChange != nil {
		b.onChange(to)
	}
}

// release gives back a half-open trial whose message was not handled (the
// subscription ended under it), so the next one can be the trial.
func (b *breaker) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.trial {
		b.trial = false
		close(b.changed)
		b.changed = make(chan struct{})
	}
}

// reopenAt is when an open breaker's cooldown started.
func (b *breaker) reopenAt() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.openedAt
}

// halfOpen ends the cooldown.
func (b *breaker) halfOpen() {
	b.mu.Lock()
	if b.state != BreakerOpen {
		b.mu.Unlock()
		return
	}
	b.set(BreakerHalfOpen)
	b.mu.Unlock()
	if b.onChange != nil {
		b.onChange(BreakerHalfOpen)
	}
}

// set changes state; b.mu is held.
func (b *breaker) set(s BreakerState) {
	b.state = s
	b.trial = false
	if s == BreakerOpen {
		b.openedAt = time.Now()
	}
	close(b.changed)
	b.changed = make(chan struct{})
}
