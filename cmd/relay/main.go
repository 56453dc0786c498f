// Command relay publishes outbox rows to RabbitMQ. See the README.
package main

import (
	"context"
	"os/signal"
	"syscall"

	"github.com/outboxrelay/outboxrelay/cmd/relay/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cli.Exit(ctx)
}
