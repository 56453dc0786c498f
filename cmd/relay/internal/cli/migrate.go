package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/pflag"

	"github.com/outboxrelay/outboxrelay/config"
	"github.com/outboxrelay/outboxrelay/migrations"
)

func migrateFlags(fs *pflag.FlagSet) {
	fs.Bool("print-sql", false, "print the SQL of every migration (and the grants of the roles named) instead of applying it, for psql or another migration tool")
	fs.Bool("print-grants", false, "print only the grants of the roles named")
	fs.String("app-role", "", "grant this role what an application needs to write outbox rows")
	fs.String("relay-role", "", "grant this role what 'relay run' and the operations commands need")
	fs.String("consumer-role", "", "grant this role what an inbox consumer needs")
	fs.String("consumers", "", "the inbox consumer names the consumer role runs, comma-separated: registered to it, so that no other role may read or write their inbox rows")
	fs.String("console-role", "", "grant this role what a read-only 'relay console' needs (it may look, never act)")
	fs.String("operator-role", "", "grant this role what requeue, retry, discard and replay need (CLI or console)")
}

func runMigrate(ctx context.Context, e *env, cfg config.Config, fs *pflag.FlagSet) error {
	printSQL, _ := fs.GetBool("print-sql")
	printGrants, _ := fs.GetBool("print-grants")
	var roles migrations.Roles
	roles.App, _ = fs.GetString("app-role")
	roles.Relay, _ = fs.GetString("relay-role")
	roles.Consumer, _ = fs.GetString("consumer-role")
	roles.Console, _ = fs.GetString("console-role")
	roles.Operator, _ = fs.GetString("operator-role")
	if names, _ := fs.GetString("consumers"); names != "" {
		for _, n := range strings.Split(names, ",") {
			roles.Consumers = append(roles.Consumers, strings.TrimSpace(n))
		}
	}
	if err := roles.Validate(); err != nil {
		return usageError{err.Error()}
	}
	targets := migrations.Targets{Exchanges: cfg.AllowedExchanges, Queues: cfg.AllowedQueues}
	if printGrants && roles.Empty() {
		return usageError{"--print-grants needs --app-role, --relay-role, --consumer-role, --console-role or --operator-role"}
	}
	if printSQL {
		script, err := migrations.Script(cfg.Schema)
		if err != nil {
			return err
		}
		fmt.Fprint(e.stdout, script)
	}
	if printSQL || printGrants {
		if roles.Empty() {
			return nil
		}
		schema, err := grantSchema(ctx, cfg)
		if err != nil {
			return err
		}
		if printSQL {
			fmt.Fprintln(e.stdout)
		}
		fmt.Fprint(e.stdout, migrations.Grants(schema, roles))
		return nil
	}
	if cfg.DatabaseURL == "" {
		return usageError{"database_url is required (set RELAY_DATABASE_URL or --database-url)"}
	}
	res, err := migrations.UpSchema(ctx, cfg.DatabaseURL, cfg.Schema)
	if err != nil {
		return err
	}
	if len(res.Carried) > 0 {
		fmt.Fprintf(e.stdout, "migrate: carried over versions %s from %s to %s (%s left as it was: drop it if nothing else uses it)\n",
			joinInts(res.Carried), migrations.LegacyVersionTable, migrations.VersionTable, migrations.LegacyVersionTable)
	}
	if len(res.Applied) == 0 {
		fmt.Fprintf(e.stdout, "migrate: nothing to apply; schema %q at version %d\n", res.Schema, res.Version)
	} else {
		fmt.Fprintf(e.stdout, "migrate: applied %s; schema %q at version %d\n", joinInts(res.Applied), res.Schema, res.Version)
	}
	if targets.Set() {
		if err := applySQL(ctx, cfg, migrations.TargetsSQL(res.Schema, targets)); err != nil {
			return fmt.Errorf("allowed targets: %w", err)
		}
		fmt.Fprintf(e.stdout, "migrate: allowed exchanges %q, queues %q (pending rows to other targets parked)\n", targets.Exchanges, targets.Queues)
	}
	if roles.Empty() {
		return nil
	}
	if err := applySQL(ctx, cfg, migrations.Grants(res.Schema, roles)); err != nil {
		return fmt.Errorf("grant: %w", err)
	}
	fmt.Fprintf(e.stdout, "migrate: granted %s\n", rolesText(roles))
	return nil
}

// grantSchema is the schema the grants name: the configured one, or the
// database's current schema, which needs database_url.
func grantSchema(ctx context.Context, cfg config.Config) (string, error) {
	if cfg.Schema != "" {
		return cfg.Schema, nil
	}
	if cfg.DatabaseURL == "" {
		return "", usageError{"grants name the schema: set schema (RELAY_SCHEMA, --schema) or database_url to read the current one"}
	}
	pool, err := openPool(ctx, cfg)
	if err != nil {
		return "", err
	}
	defer pool.Close()
	var schema *string
	if err := pool.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		return "", fmt.Errorf("read current schema: %w", err)
	}
	if schema == nil {
		return "", fmt.Errorf("no schema of the search_path exists")
	}
	return *schema, nil
}

// applySQL runs statements in one transaction.
func applySQL(ctx context.Context, cfg config.Config, statements string) error {
	pool, err := openPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, statements)
		return err
	})
}

func rolesText(r migrations.Roles) string {
	var s string
	for _, p := range [][2]string{{"application", r.App}, {"relay", r.Relay}, {"consumer", r.Consumer}, {"console", r.Console}, {"operator", r.Operator}} {
		if p[1] != "" {
			if s != "" {
				s += ", "
			}
			s += fmt.Sprintf("%s role %q", p[0], p[1])
		}
	}
	return s
}
