// Command relay publishes outbox rows to RabbitMQ. See the README.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
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

func main() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cli.Exit(ctx)
}
