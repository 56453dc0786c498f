package cli

import (
	"io"
	"log/slog"
	"math"
	"runtime/debug"
	"testing"

	"github.com/outboxrelay/outboxrelay/config"
)

// The configuration's memory limit (2 x workers x max_batch_bytes + 48
// MiB) applies unless a lower one is already in place: the binary sets
// its cgroup's share before run, and run must not raise it past what the
// container allows.
func TestMemoryLimitNeverRaisesALowerOne(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	e := &env{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	cfg := config.Config{Workers: 2, MaxBatchBytes: 16 << 20, MaxPayloadBytes: 16 << 20}
	const configured = 2*2*16<<20 + 48<<20

	debug.SetMemoryLimit(math.MaxInt64) // the runtime's default: none
	setMemoryLimit(e, cfg)
	if got := debug.SetMemoryLimit(-1); got != configured {
		t.Errorf("without a limit in place: %d, want the configured %d", got, configured)
	}

	const cgroup = 100 << 20 // 90% of a pod's 111 MiB
	debug.SetMemoryLimit(cgroup)
	setMemoryLimit(e, cfg)
	if got := debug.SetMemoryLimit(-1); got != cgroup {
		t.Errorf("under a cgroup's %d: %d, want it kept", cgroup, got)
	}
}
