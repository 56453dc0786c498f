package backoff

import (
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	b := Policy{Base: 100 * time.Millisecond, Max: 2 * time.Second}
	cases := []struct {
		n    int
		ceil time.Duration
	}{{0, 100 * time.Millisecond}, {1, 200 * time.Millisecond}, {4, 1600 * time.Millisecond}, {5, 2 * time.Second}, {60, 2 * time.Second}}
	for _, tc := range cases {
		if got := b.Ceiling(tc.n); got != tc.ceil {
			t.Errorf("ceiling(%d) = %s, want %s", tc.n, got, tc.ceil)
		}
		for range 100 {
			if d := b.Full(tc.n); d < 0 || d > tc.ceil {
				t.Fatalf("full(%d) = %s outside [0, %s]", tc.n, d, tc.ceil)
			}
			if d := b.Equal(tc.n); d < tc.ceil/2 || d > tc.ceil {
				t.Fatalf("equal(%d) = %s outside [%s, %s]", tc.n, d, tc.ceil/2, tc.ceil)
			}
		}
	}
}
