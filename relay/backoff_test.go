package relay

import (
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	b := backoff{base: 100 * time.Millisecond, max: 2 * time.Second}
	cases := []struct {
		n    int
		ceil time.Duration
	}{{0, 100 * time.Millisecond}, {1, 200 * time.Millisecond}, {4, 1600 * time.Millisecond}, {5, 2 * time.Second}, {60, 2 * time.Second}}
	for _, tc := range cases {
		if got := b.ceiling(tc.n); got != tc.ceil {
			t.Errorf("ceiling(%d) = %s, want %s", tc.n, got, tc.ceil)
		}
		for range 100 {
			if d := b.full(tc.n); d < 0 || d > tc.ceil {
				t.Fatalf("full(%d) = %s outside [0, %s]", tc.n, d, tc.ceil)
			}
			if d := b.equal(tc.n); d < tc.ceil/2 || d > tc.ceil {
				t.Fatalf("equal(%d) = %s outside [%s, %s]", tc.n, d, tc.ceil/2, tc.ceil)
			}
		}
	}
}
