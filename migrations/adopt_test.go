package migrations_test

import (
	"context"
	"database/sql"
	"maps"
	"slices"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/migrations"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// appMigrations is an application's own goose history, with integer or
// timestamp versions, in goose's default table.
func appMigrations(timestamps bool) fstest.MapFS {
	v := []string{"00001", "00002", "00003", "00004"}
	if timestamps {
		v = []string{"20240105120000", "20240212093000", "20240301170000", "20240402080000"}
	}
	return fstest.MapFS{
		v[0] + "_customers.sql":  {Data: []byte("-- +goose Up\nCREATE TABLE customers (id bigint PRIMARY KEY);\n-- +goose Down\nDROP TABLE customers;\n")},
		v[1] + "_orders.sql":     {Data: []byte("-- +goose Up\nCREATE TABLE orders (id bigint PRIMARY KEY, customer bigint);\n-- +goose Down\nDROP TABLE orders;\n")},
		v[2] + "_orders_idx.sql": {Data: []byte("-- +goose Up\nCREATE INDEX orders_customer ON orders (customer);\n-- +goose Down\nDROP INDEX orders_customer;\n")},
		v[3] + "_later.sql":      {Data: []byte("-- +goose Up\nALTER TABLE orders ADD COLUMN note text;\n-- +goose Down\nALTER TABLE orders DROP COLUMN note;\n")},
	}
}

// gooseUp applies files to dsn with goose's defaults (table
// goose_db_version), up to version to (0: all).
func gooseUp(t *testing.T, dsn string, files fstest.MapFS, table string, to int64) []int64 {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, files,
		goose.WithDisableGlobalRegistry(true), goose.WithTableName(table))
	if err != nil {
		t.Fatal(err)
	}
	var res []*goose.MigrationResult
	if to > 0 {
		res, err = p.UpTo(context.Background(), to)
	} else {
		res, err = p.Up(context.Background())
	}
	if err != nil {
		t.Fatalf("goose up (%s): %v", table, err)
	}
	var applied []int64
	for _, r := range res {
		applied = append(applied, r.Source.Version)
	}
	return applied
}

// history reads a goose version table in full.
func history(t *testing.T, pool *pgxpool.Pool, table string) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(),
		`SELECT format('%s %s %s %s', id, version_id, is_applied, tstamp) FROM `+table+` ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	h, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// otherSchema names a schema that does not exist yet, dropped when the
// test ends.
func otherSchema(t *testing.T) string {
	t.Helper()
	name := testenv.Name("relay")
	pool := testenv.Pool(t, testenv.Services(t).DatabaseURL)
	t.Cleanup(func() {
		if _, err := pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+name+" CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	return name
}

// Acceptance 1 (issue 11): an application whose goose history (integer or
// timestamp versions) lives in the same schema keeps it untouched, and the
// relay's tables are created, in that schema or in one of their own.
func TestMigrateBesideAnApplicationsGoose(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		timestamps bool
		ownSchema  bool
	}{
		{"integer versions, same schema", false, false},
		{"timestamp versions, same schema", true, false},
		{"integer versions, schema relay", false, true},
		{"timestamp versions, schema relay", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			appDSN := testenv.NewSchema(t, false)
			appPool := testenv.Pool(t, appDSN)
			files := appMigrations(tc.timestamps)
			firstThree := fstest.MapFS{}
			names := slices.Sorted(maps.Keys(files))
			for _, n := range names[:3] {
				firstThree[n] = files[n]
			}
			gooseUp(t, appDSN, firstThree, "goose_db_version", 0)
			before := history(t, appPool, "goose_db_version")

			schema := ""
			if tc.ownSchema {
				schema = otherSchema(t)
			}
			res, err := migrations.UpSchema(ctx, appDSN, schema)
			if err != nil {
				t.Fatalf("relay migrate: %v", err)
			}
			if len(res.Carried) != 0 || len(res.Applied) == 0 || res.Applied[0] != 1 {
				t.Fatalf("relay migrate: carried %v, applied %v; want nothing carried and every relay migration applied", res.Carried, res.Applied)
			}
			if after := history(t, appPool, "goose_db_version"); !slices.Equal(before, after) {
				t.Fatalf("the application's goose history changed:\nbefore %q\nafter  %q", before, after)
			}
			// The application's next migration applies as if the relay
			// were not there.
			if got := gooseUp(t, appDSN, files, "goose_db_version", 0); len(got) != 1 {
				t.Fatalf("the application's next goose up applied %v, want its one new version", got)
			}

			relayDSN := appDSN
			if tc.ownSchema {
				relayDSN = testenv.WithSearchPath(testenv.Services(t).DatabaseURL, schema)
				var inApp bool
				if err := appPool.QueryRow(ctx, `SELECT to_regclass(quote_ident(current_schema()) || '.outbox') IS NOT NULL`).Scan(&inApp); err != nil || inApp {
					t.Fatalf("an outbox table was created in the application's schema (%v)", err)
				}
				// The application writes through its own connection.
				if _, err := (outbox.Table{Schema: schema}).Enqueue(ctx, appPool, outbox.Message{RoutingKey: "k", Payload: []byte("{}"), OrderingKey: "o"}); err != nil {
					t.Fatalf("enqueue into schema %s: %v", schema, err)
				}
			}
			if err := migrations.Check(ctx, testenv.Pool(t, relayDSN)); err != nil {
				t.Fatalf("relay schema check: %v", err)
			}
		})
	}
}
