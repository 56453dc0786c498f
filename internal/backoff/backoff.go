// Package backoff is capped exponential backoff with jitter, shared by the
// relay and the inbox consumer.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy is capped exponential backoff: the nth delay (n from 0) has the
// ceiling min(Max, Base*2^n).
type Policy struct {
	Base, Max time.Duration
}

// Ceiling is the nth delay before jitter.
func (p Policy) Ceiling(n int) time.Duration {
	d := p.Base
	for i := 0; i < n && d < p.Max; i++ {
		d *= 2
	}
	return min(d, p.Max)
}

// Full draws uniformly from [0, Ceiling(n)]: for reconnect loops, so that
// many clients losing one server do not come back in lockstep.
func (p Policy) Full(n int) time.Duration {
	c := p.Ceiling(n)
	if c <= 0 {
		return 0
	}
	return rand.N(c + 1)
}

// Equal draws from [Ceiling(n)/2, Ceiling(n)]: for row retries, so the
// delay still grows predictably with the attempt count.
func (p Policy) Equal(n int) time.Duration {
	c := p.Ceiling(n)
	if c <= 1 {
		return c
	}
	return c/2 + rand.N(c/2+1)
}

// Sleep waits d or until done closes; it reports whether the full delay
// passed.
func Sleep(done <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-done:
		return false
	}
}
