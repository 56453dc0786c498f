package defaults

import (
	"testing"
	"time"
)

func TestSetFillsOnlyZeroValues(t *testing.T) {
	t.Parallel()
	var unset time.Duration
	set := 3 * time.Second
	Set(&unset, time.Second)
	Set(&set, time.Second)
	if unset != time.Second || set != 3*time.Second {
		t.Errorf("unset became %s (want 1s), set became %s (want 3s)", unset, set)
	}
}
