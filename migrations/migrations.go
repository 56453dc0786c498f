package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var files embed.FS

// VersionTable is the relay's own goose version table, where Up records
// what it applied and Check reads it. It is not goose's default
// (goose_db_version), so that an application migrating the same schema
// with goose keeps its history to itself.
const VersionTable = "outbox_relay_version"

// LegacyVersionTable is where relays before 0.2 kept their history (goose's
// default table). Up carries the relay's versions over from it once; it
// never writes to it.
const LegacyVersionTable = "goose_db_version"

// ErrNotMigrated is wrapped by Check's error when the schema lacks the
// relay's tables or is older than this binary: `relay migrate` fixes it.
var ErrNotMigrated = errors.New("run `relay migrate`")

// ErrWrongSchema is wrapped (beside ErrNotMigrated) by Check's error
// when the current schema has no relay tables but other schemas do: the
// relay is probably pointed at the wrong schema, and `relay migrate`
// would create a second, empty outbox.
var ErrWrongSchema = errors.New("the relay's tables are in another schema")

// wrongSchemaError reads as its message alone, and is both ErrNotMigrated
// (so that callers stop at once, as for a missing schema) and
// ErrWrongSchema.
type wrongSchemaError struct{ msg string }

func (e wrongSchemaError) Error() string { return e.msg }
func (e wrongSchemaError) Is(target error) bool {
	return target == ErrNotMigrated || target == ErrWrongSchema
}

// otherSchemasSQL lists the schemas that hold the relay's version table
// and an outbox, the current one aside, in name order (at most 5).
const otherSchemasSQL = `
SELECT coalesce(array_agg(nspname ORDER BY nspname), '{}') FROM (
    SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = $1 AND c.relkind IN ('r', 'p')
      AND n.nspname IS DISTINCT FROM current_schema()
      AND EXISTS (SELECT 1 FROM pg_catalog.pg_class o WHERE o.relnamespace = n.oid AND o.relname = 'outbox')
    ORDER BY n.nspname LIMIT 5) s`

// Result says what Up did: the versions it carried over from
// LegacyVersionTable, the versions it applied, and the version the schema
// is at afterwards.
type Result struct {
	Schema  string
	Carried []int64
	Applied []int64
	Version int64
}

// Up applies every pending migration to the schema that unqualified names
// resolve to on databaseURL (its current schema).
func Up(ctx context.Context, databaseURL string) (Result, error) {
	return UpSchema(ctx, databaseURL, "")
}

// UpSchema applies every pending migration to schema, creating the schema
// if it does not exist; an empty schema is the connection's current schema
// (Up). The relay's tables, functions and version table all go there.
func UpSchema(ctx context.Context, databaseURL, schema string) (Result, error) {
	cc, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return Result{}, fmt.Errorf("migrations: parse database url: %w", err)
	}
	if schema != "" {
		cc.RuntimeParams["search_path"] = SearchPath(schema)
	}
	db := stdlib.OpenDB(*cc)
	defer db.Close()

	var res Result
	if res.Schema, res.Carried, err = prepare(ctx, db, schema); err != nil {
		return Result{}, err
	}
	// Serialise concurrent runs against the same schema with an advisory
	// lock keyed on it; different schemas migrate in parallel.
	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockID(lockID(res.Schema)),
		lock.WithLockTimeout(1, 300),
	)
	if err != nil {
		return Result{}, fmt.Errorf("migrations: lock: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, files,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithTableName(VersionTable),
	)
	if err != nil {
		return Result{}, fmt.Errorf("migrations: %w", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("migrations: up: %w", err)
	}
	for _, r := range results {
		res.Applied = append(res.Applied, r.Source.Version)
	}
	if res.Version, err = p.GetDBVersion(ctx); err != nil {
		return Result{}, fmt.Errorf("migrations: read version: %w", err)
	}
	return res, nil
}

// SearchPath returns the value of search_path that makes schema the
// current schema: the name quoted, so it is taken as written.
func SearchPath(schema string) string { return pgx.Identifier{schema}.Sanitize() }

func lockID(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("outboxrelay.migrations." + schema))
	return int64(h.Sum64() >> 1)
}

// Querier is what Check needs: a *pgxpool.Pool, *pgx.Conn or pgx.Tx.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// checkSQL reads, in one round trip, the schema that unqualified names
// resolve to (the one Up migrates), whether the version table and the
// outbox exist there (and an earlier relay's LegacyVersionTable), and the
// versions applied: a version counts when its latest row says applied
// (goose records a down as a later row or deletes the row). %[1]s is
// VersionTable, %[2]s LegacyVersionTable.
const checkSQL = `
SELECT current_schema(),
       to_regclass(quote_ident(current_schema()) || '.%[1]s') IS NOT NULL,
       to_regclass(quote_ident(current_schema()) || '.outbox') IS NOT NULL,
       to_regclass(quote_ident(current_schema()) || '.%[2]s') IS NOT NULL`

const appliedSQL = `
SELECT coalesce(array_agg(version_id), '{}')
FROM (SELECT DISTINCT ON (version_id) version_id, is_applied
      FROM %s ORDER BY version_id, id DESC) v
WHERE is_applied`

// Check reports whether the schema db works in holds the relay's tables at
// the version this binary embeds. It returns an error wrapping
// ErrNotMigrated, naming the schema and versions, when the tables are
// missing or a migration is not applied; a schema newer than the binary
// is fine (an older binary during a rolling upgrade). Any other error is
// the database's, wrapped with %w for the caller to classify.
func Check(ctx context.Context, db Querier) error {
	want, err := embedded()
	if err != nil {
		return err
	}
	var schema *string
	var hasVersions, hasOutbox, hasLegacy bool
	if err := db.QueryRow(ctx, fmt.Sprintf(checkSQL, VersionTable, LegacyVersionTable)).Scan(&schema, &hasVersions, &hasOutbox, &hasLegacy); err != nil {
		return fmt.Errorf("migrations: check schema: %w", err)
	}
	if schema == nil {
		return fmt.Errorf("migrations: no schema in search_path exists: %w", ErrNotMigrated)
	}
	if !hasVersions && hasOutbox && hasLegacy {
		return fmt.Errorf("migrations: schema %q was migrated by an earlier relay (history in %s): %w",
			*schema, LegacyVersionTable, ErrNotMigrated)
	}
	if !hasVersions || !hasOutbox {
		var others []string
		if err := db.QueryRow(ctx, otherSchemasSQL, VersionTable).Scan(&others); err != nil {
			return fmt.Errorf("migrations: look for the relay's tables: %w", err)
		}
		if len(others) > 0 {
			return wrongSchemaError{fmt.Sprintf("migrations: schema %q has no relay tables, but %s: "+
				"set RELAY_SCHEMA=%s (configuration key schema) to use them; `relay migrate` would create a second, empty outbox in %q",
				*schema, holders(others), others[0], *schema)}
		}
		return fmt.Errorf("migrations: schema %q has no relay tables: %w", *schema, ErrNotMigrated)
	}
	var applied []int64
	table := pgx.Identifier{*schema, VersionTable}.Sanitize()
	if err := db.QueryRow(ctx, fmt.Sprintf(appliedSQL, table)).Scan(&applied); err != nil {
		return fmt.Errorf("migrations: read versions: %w", err)
	}
	done := make(map[int64]bool, len(applied))
	var at int64
	for _, v := range applied {
		done[v] = true
		at = max(at, v)
	}
	var missing []string
	for _, v := range want {
		if !done[v] {
			missing = append(missing, strconv.FormatInt(v, 10))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("migrations: schema %q is at version %d, this binary needs %d (missing %s): %w",
			*schema, at, want[len(want)-1], strings.Join(missing, ", "), ErrNotMigrated)
	}
	return nil
}

// embedded returns the versions of the embedded migrations, ascending
// (goose names them NNNNN_name.sql).
func embedded() ([]int64, error) {
	names, err := fs.Glob(files, "*.sql")
	if err != nil {
		return nil, fmt.Errorf("migrations: list embedded: %w", err)
	}
	var out []int64
	for _, n := range names {
		prefix, _, _ := strings.Cut(n, "_")
		v, err := strconv.ParseInt(prefix, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("migrations: embedded file %s has no version number", n)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, errors.New("migrations: none embedded")
	}
	slices.Sort(out)
	return out, nil
}

// holders says which schemas have the tables: `schema "a" has them`,
// `schemas "a", "b" have them`.
func holders(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	if len(q) == 1 {
		return "schema " + q[0] + " has them"
	}
	return "schemas " + strings.Join(q, ", ") + " have them"
}
