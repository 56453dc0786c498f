package cli

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/outboxrelay/outboxrelay/cmd/relay/internal/console"
	"github.com/outboxrelay/outboxrelay/config"
	"github.com/outboxrelay/outboxrelay/migrations"
)

// runConsole serves the web console. It is a command of its own, not a
// listener inside relay run: it runs under its own database role (the
// read-only console role or the operator role, never the relay's), it can
// be started where and when an operator needs it and stopped without
// touching the relay, and a relay that does not serve it has no console
// code reachable from the network.
func runConsole(ctx context.Context, e *env, cfg config.Config, _ *pflag.FlagSet) error {
	var token string
	if cfg.ConsoleTokenFile != "" {
		b, err := os.ReadFile(cfg.ConsoleTokenFile)
		if err != nil {
			return fmt.Errorf("console_token_file: %w", err)
		}
		token = strings.TrimSpace(string(b))
		if len(token) < 16 {
			return fmt.Errorf("console_token_file: the token must be at least 16 characters")
		}
	}
	pool, err := openPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := migrations.Check(ctx, pool); err != nil {
		return err
	}
	srv, err := console.New(console.Config{Pool: pool, Addr: cfg.ConsoleAddr, Token: token, Logger: e.log})
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}
