// Command relay publishes outbox rows to RabbitMQ. See the README.
package main

import (
	"context"
	"os"
	"os/signal"
	"path"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"

	"github.com/outboxrelay/outboxrelay/cmd/relay/internal/cli"
)

// gcPercent is the relay's GOGC when the environment names none. The
// relay's live heap is small (a few batches in flight) but it allocates
// for every row it moves; at Go's default of 100 the collector and the
// scavenger took a third of its CPU per message in a drain
// (docs/benchmarks.md, "Cost per message"). 400 lets the heap grow to five
// times what is live before a collection. GOGC or GOMEMLIMIT in the
// environment take precedence, as they do for any Go program.
const gcPercent = 400

// maxProcs is the relay's GOMAXPROCS when the environment names none (or
// an empty one). The relay moves bytes between two sockets and waits for
// both; most of its goroutines run for microseconds and park. With two or
// more Ps, each wake-up of a parked goroutine (a confirm, a frame read,
// amqp091-go's heartbeater, which is woken for every message sent) may
// wake an idle thread to run it, and on the project's two-core virtual
// machine those cross-thread wake-ups cost a sixth of the relay's CPU per
// message: 10.2-10.8 us against 8.8 with one P, same drains, interleaved
// (docs/benchmarks.md, "Cost per message"). One P runs about 100,000
// messages a second of the relay's work, several times what one RabbitMQ
// queue takes; relays scale out as processes. GOMAXPROCS in the
// environment takes precedence.
const maxProcs = 1

func main() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(maxProcs)
	}
	// An empty variable counts as unset, as it does for the runtime.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		if limit, ok := memoryLimit(os.ReadFile); ok {
			debug.SetMemoryLimit(limit)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cli.Exit(ctx)
}

// memoryLimit is the soft memory limit the relay gives itself when the
// environment names no GOMEMLIMIT: 90% of its cgroup's memory limit (a
// container's, or a systemd unit's MemoryMax), and none without one. With
// GOGC at 400 the heap may grow to five times what is live (two batches
// of 16 MiB by default); near the limit the collector runs sooner
// instead, before the kernel kills the process. read reads a file
// (os.ReadFile).
func memoryLimit(read func(string) ([]byte, error)) (int64, bool) {
	files := []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}
	// The process's own cgroup comes first: "0::/system.slice/relay.service"
	// (v2), "4:memory:/system.slice/relay.service" (v1). In a container it
	// is "/", and the files above are its own.
	if data, err := read("/proc/self/cgroup"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if p, ok := strings.CutPrefix(line, "0::"); ok && p != "/" {
				files = append([]string{path.Join("/sys/fs/cgroup", p, "memory.max")}, files...)
			}
			if _, p, ok := strings.Cut(line, ":memory:"); ok && p != "/" {
				files = append([]string{path.Join("/sys/fs/cgroup/memory", p, "memory.limit_in_bytes")}, files...)
			}
		}
	}
	for _, f := range files {
		data, err := read(f)
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
		// "max" (v2) or a page-rounded MaxInt64 (v1) is no limit.
		if err != nil || n <= 0 || n >= 1<<62 {
			return 0, false
		}
		return n / 10 * 9, true
	}
	return 0, false
}
