package inbox

import (
	"math/rand/v2"
	"time"
)

// backoff is capped exponential backoff with full jitter: the nth delay (n
// from 0) is drawn from [0, min(max, base*2^n)], so many consumers losing
// one broker do not come back in lockstep.
type backoff struct {
	base, max time.Duration
}

func (b backoff) delay(n int) time.Duration {
	d := b.base
	for i := 0; i < n && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	if d <= 0 {
		return 0
	}
	return rand.N(d + 1)
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
