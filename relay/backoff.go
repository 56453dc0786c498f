package relay

import (
	"math/rand/v2"
	"time"
)

// backoff is capped exponential backoff. The nth delay (n from 0) is
// min(max, base*2^n); full jitter draws uniformly from [0, that], equal
// jitter from [that/2, that].
type backoff struct {
	base, max time.Duration
}

func (b backoff) ceiling(n int) time.Duration {
	d := b.base
	for i := 0; i < n && d < b.max; i++ {
		d *= 2
	}
	return min(d, b.max)
}

// full is for reconnect loops: many relays losing one broker at once must
// not come back in lockstep.
func (b backoff) full(n int) time.Duration {
	c := b.ceiling(n)
	if c <= 0 {
		return 0
	}
	return rand.N(c + 1)
}

// equal is for row retries: the delay still grows with the attempt count,
// so an operator reading available_at sees a predictable schedule.
func (b backoff) equal(n int) time.Duration {
	c := b.ceiling(n)
	if c <= 1 {
		return c
	}
	return c/2 + rand.N(c/2+1)
}

// sleep waits d or until done closes; it reports whether the full delay
// passed.
func sleep(done <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-done:
		return false
	}
}
