package cli

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/outboxrelay/outboxrelay/config"
	"github.com/outboxrelay/outboxrelay/migrations"
)

func runMigrate(ctx context.Context, e *env, cfg config.Config, _ *pflag.FlagSet) error {
	res, err := migrations.Up(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	if len(res.Applied) == 0 {
		fmt.Fprintf(e.stdout, "migrate: nothing to apply; schema at version %d\n", res.Version)
		return nil
	}
	fmt.Fprintf(e.stdout, "migrate: applied %s; schema at version %d\n", joinInts(res.Applied), res.Version)
	return nil
}
