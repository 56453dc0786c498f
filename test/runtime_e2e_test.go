package test

import (
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// TestBinaryRuntimeDefaults checks the Go runtime settings the relay
// binary gives itself (cmd/relay/main.go), as its own /metrics reports
// them: one P and GOGC 400 when the environment names none (an empty
// variable is none, as for the runtime), and the environment's values
// when it does.
func TestBinaryRuntimeDefaults(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	base := []string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + env.AMQPURL}
	for _, c := range []struct {
		name             string
		env              []string
		procs, gcPercent string
	}{
		{"defaults", []string{"GOMAXPROCS=", "GOGC="}, "1", "400"},
		{"environment", []string{"GOMAXPROCS=2", "GOGC=150"}, "2", "150"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := startRelay(t, append(base, c.env...)...)
			var procs, gc string
			testenv.Eventually(t, time.Minute, "runtime metrics", func() (bool, error) {
				procs, gc = p.Metric("go_sched_gomaxprocs_threads"), p.Metric("go_gc_gogc_percent")
				return procs != "" && gc != "", nil
			})
			if procs != c.procs || gc != c.gcPercent {
				t.Errorf("GOMAXPROCS %s and GOGC %s, want %s and %s", procs, gc, c.procs, c.gcPercent)
			}
		})
	}
}
