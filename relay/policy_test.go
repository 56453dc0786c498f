package relay

import "testing"

// The policy parks what the broker will never take, the last attempt,
// and, only when asked, unroutable and missing-exchange rows at once;
// everything else keeps retrying.
func TestParksAtOnce(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		reason         string
		permanent      bool
		attempts, max  int
		parkUnroutable bool
		want           bool
	}{
		{reasonUnroutable, false, 0, 10, false, false}, // the default: retry
		{reasonNoExchange, false, 0, 10, false, false},
		{reasonUnroutable, false, 0, 10, true, true}, // parked at the first failure
		{reasonNoExchange, false, 0, 10, true, true},
		{reasonUnroutable, false, 4, 10, true, true}, // a requeued row too
		{reasonNacked, false, 0, 10, true, false},    // not a routing failure
		{reasonChannelClosed, false, 0, 10, true, false},
		{reasonConnectionLost, false, 0, 10, true, false},
		{reasonNacked, false, 8, 10, false, false},
		{reasonNacked, false, 9, 10, false, true}, // the tenth failure
		{reasonNacked, false, 0, 1, false, true},
		{reasonTooLarge, true, 0, 10, false, true}, // permanent whatever the policy
		{reasonBadProperty, true, 0, 10, true, true},
	} {
		got := parksAtOnce(tc.reason, tc.permanent, tc.attempts, tc.max, tc.parkUnroutable)
		if got != tc.want {
			t.Errorf("parksAtOnce(%q, permanent %v, attempts %d of %d, park_unroutable %v) = %v, want %v",
				tc.reason, tc.permanent, tc.attempts, tc.max, tc.parkUnroutable, got, tc.want)
		}
	}
}
