package migrations_test

import (
	"context"
	"database/sql"
	"errors"
	"io/fs"
	"maps"
	"slices"
	"strings"
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
// goose_db_version unless table says otherwise), up to version to (0:
// all); nil files are the relay's own.
func gooseUp(t *testing.T, dsn string, files fs.FS, table string, to int64) []int64 {
	t.Helper()
	if files == nil {
		files = migrations.Files // what an earlier relay ran
	}
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

// An application whose goose history (integer or
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
				schema = testenv.NewSchemaName(t)
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

// A database migrated by an earlier relay (its history in
// goose_db_version) is carried over: no migration runs twice, the rows
// stay, and the schema ends as a fresh one; the legacy table is left as it
// was. An earlier relay that stopped at version 2 gets the rest applied.
func TestMigrateCarriesOverAnEarlierRelaysHistory(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	freshDSN := testenv.NewSchema(t, true)
	fresh := testenv.SchemaDump(t, testenv.Pool(t, freshDSN), testenv.CurrentSchema(t, freshDSN), migrations.VersionTable)

	for _, upTo := range []int64{4, 2} { // the earlier relay knew versions 1-4
		dsn := testenv.NewSchema(t, false)
		pool := testenv.Pool(t, dsn)
		legacy := gooseUp(t, dsn, nil, migrations.LegacyVersionTable, upTo)
		if _, err := outbox.Enqueue(ctx, pool, outbox.Message{RoutingKey: "k", Payload: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
		err := migrations.Check(ctx, pool)
		if !errors.Is(err, migrations.ErrNotMigrated) || !strings.Contains(err.Error(), "earlier relay") {
			t.Fatalf("check of a schema an earlier relay migrated: got %v, want ErrNotMigrated naming the earlier relay", err)
		}
		before := history(t, pool, migrations.LegacyVersionTable)

		res, err := migrations.Up(ctx, dsn)
		if err != nil {
			t.Fatalf("migrate (earlier relay at %v): %v", legacy, err)
		}
		if !slices.Equal(res.Carried, legacy) {
			t.Errorf("carried %v, want the earlier relay's %v", res.Carried, legacy)
		}
		for _, v := range res.Applied {
			if slices.Contains(legacy, v) {
				t.Errorf("version %d applied again (applied %v)", v, res.Applied)
			}
		}
		if after := history(t, pool, migrations.LegacyVersionTable); !slices.Equal(before, after) {
			t.Errorf("%s changed:\nbefore %q\nafter  %q", migrations.LegacyVersionTable, before, after)
		}
		// Everything but the legacy table, which is left, as a fresh one.
		got := slices.DeleteFunc(testenv.SchemaDump(t, pool, testenv.CurrentSchema(t, dsn), migrations.VersionTable),
			func(l string) bool { return strings.Contains(l, migrations.LegacyVersionTable) })
		if !slices.Equal(got, fresh) {
			t.Errorf("upgraded schema differs from a fresh one:\n%s", diff(fresh, got))
		}
		var rows int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&rows); err != nil || rows != 1 {
			t.Errorf("outbox rows after the upgrade: %d (%v), want 1", rows, err)
		}
		if err := migrations.Check(ctx, pool); err != nil {
			t.Errorf("check after the upgrade: %v", err)
		}
		again, err := migrations.Up(ctx, dsn)
		if err != nil || len(again.Carried)+len(again.Applied) != 0 {
			t.Errorf("second migrate: carried %v, applied %v, %v; want nothing", again.Carried, again.Applied, err)
		}
	}
}

// diff lists the lines only one side has.
func diff(want, got []string) string {
	var b strings.Builder
	for _, l := range want {
		if !slices.Contains(got, l) {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range got {
		if !slices.Contains(want, l) {
			b.WriteString("+ " + l + "\n")
		}
	}
	return b.String()
}
