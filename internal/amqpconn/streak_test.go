package amqpconn

import (
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/backoff"
)

// The failure streak that sets the reconnect delay grows with each failed
// dial or lost connection and ends when a connection proves itself.
func TestFailureStreak(t *testing.T) {
	t.Parallel()
	m := New(Config{Backoff: backoff.Policy{Base: time.Millisecond, Max: time.Hour}})
	for i := 0; i < 3; i++ {
		if d := m.fail(); d > m.cfg.Backoff.Ceiling(i) {
			t.Fatalf("delay %d = %v, above its ceiling %v", i, d, m.cfg.Backoff.Ceiling(i))
		}
	}
	if m.streak != 3 {
		t.Fatalf("streak after 3 failures = %d, want 3", m.streak)
	}
	m.Settled()
	if m.streak != 0 {
		t.Fatalf("streak after Settled = %d, want 0", m.streak)
	}
}
