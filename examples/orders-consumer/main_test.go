package main

import (
	"context"
	"errors"
	"flag"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// A consumer role without CREATE on the schema starts on a table its owner
// created and granted (the demo's least-privilege setup); on a missing
// table it fails with the database's reason. The owner creates it.
func TestEnsureTableUnderALeastPrivilegeRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := testenv.NewSchema(t, false)
	admin := testenv.Pool(t, dsn)
	schema := currentSchema(t, admin)
	role, roleURL := testenv.LoginRole(t, admin, dsn, "consumer")
	if _, err := admin.Exec(ctx, "GRANT USAGE ON SCHEMA "+schema+" TO "+role); err != nil {
		t.Fatal(err)
	}
	consumer := testenv.Pool(t, roleURL)

	if err := ensureTable(ctx, consumer); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("missing table, role without CREATE: err %v, want permission denied", err)
	}
	if err := ensureTable(ctx, admin); err != nil {
		t.Fatalf("owner: %v", err)
	}
	if _, err := admin.Exec(ctx, "GRANT SELECT, INSERT ON orders_applied TO "+role); err != nil {
		t.Fatal(err)
	}
	if err := ensureTable(ctx, consumer); err != nil {
		t.Fatalf("existing table, role without CREATE: %v", err)
	}
	if _, err := consumer.Exec(ctx, insertOrder, 1, 100, "m-1"); err != nil {
		t.Fatalf("insert as the consumer role: %v", err)
	}
}

func currentSchema(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var s string
	if err := pool.QueryRow(context.Background(), "SELECT current_schema()").Scan(&s); err != nil {
		t.Fatal(err)
	}
	return pgx.Identifier{s}.Sanitize()
}

// -help prints every flag's default: a URL taken from the environment must
// not be one, or the help would print its password. The environment still
// fills the flags not given, ORDERS_* before RELAY_*, and a flag given
// wins over both.
func TestHelpShowsNoPasswordFromTheEnvironment(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"RELAY_DATABASE_URL": "postgres://app:s3cret-db@db/outbox",
		"RELAY_AMQP_URL":     "amqp://relay:s3cret-mq@mq/",
		"ORDERS_AMQP_URL":    "amqp://orders:s3cret-orders@mq/",
		"ORDERS_QUEUE":       "from-env",
	}
	fs := flag.NewFlagSet("orders-consumer", flag.ContinueOnError)
	var help strings.Builder
	fs.SetOutput(&help)
	_, err := parseFlags(fs, []string{"-help"}, func(k string) string { return env[k] })
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-help: %v, want flag.ErrHelp", err)
	}
	if strings.Contains(help.String(), "s3cret") {
		t.Errorf("-help prints a password from the environment:\n%s", help.String())
	}
	if !strings.Contains(help.String(), "RELAY_DATABASE_URL") {
		t.Errorf("-help does not name the variable the URL comes from:\n%s", help.String())
	}

	fs = flag.NewFlagSet("orders-consumer", flag.ContinueOnError)
	o, err := parseFlags(fs, []string{"-queue", "from-flag"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if o.dbURL != env["RELAY_DATABASE_URL"] || o.amqpURL != env["ORDERS_AMQP_URL"] || o.queue != "from-flag" || o.exchange != "orders" {
		t.Errorf("options %+v: want the database URL from RELAY_*, the broker's from ORDERS_*, the queue from its flag, the exchange's default", o)
	}
}
