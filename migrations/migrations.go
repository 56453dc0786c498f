package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var files embed.FS

// VersionTable is goose's version table, where Up records what it applied
// and Check reads it. Named once here so that renaming it is one change.
const VersionTable = "goose_db_version"

// ErrNotMigrated is wrapped by Check's error when the schema lacks the
// relay's tables or is older than this binary: `relay migrate` fixes it.
var ErrNotMigrated = errors.New("run `relay migrate`")

// Result says what Up did: the versions it applied, and the version the
// schema is at afterwards.
type Result struct {
	Applied []int64
	Version int64
}

// Up applies every pending migration to the database at databaseURL.
func Up(ctx context.Context, databaseURL string) (Result, error) {
	db, err := sql.Open("pgx", databaseURL)
	if err != nil {
		return Result{}, fmt.Errorf("migrations: open database: %w", err)
	}
	defer db.Close()

	// Serialise concurrent runs against the same schema with an advisory
	// lock keyed on it; different schemas migrate in parallel.
	var schema string
	if err := db.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		return Result{}, fmt.Errorf("migrations: read current schema: %w", err)
	}
	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockID(lockID(schema)),
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
	var res Result
	for _, r := range results {
		res.Applied = append(res.Applied, r.Source.Version)
	}
	if res.Version, err = p.GetDBVersion(ctx); err != nil {
		return Result{}, fmt.Errorf("migrations: read version: %w", err)
	}
	return res, nil
}

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
// outbox exist there, and the versions applied: a version counts when its
// latest row says applied (goose records a down as a later row or deletes
// the row). %s is VersionTable.
const checkSQL = `
SELECT current_schema(),
       to_regclass(quote_ident(current_schema()) || '.%[1]s') IS NOT NULL,
       to_regclass(quote_ident(current_schema()) || '.outbox') IS NOT NULL`

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
	var hasVersions, hasOutbox bool
	if err := db.QueryRow(ctx, fmt.Sprintf(checkSQL, VersionTable)).Scan(&schema, &hasVersions, &hasOutbox); err != nil {
		return fmt.Errorf("migrations: check schema: %w", err)
	}
	if schema == nil {
		return fmt.Errorf("migrations: no schema in search_path exists: %w", ErrNotMigrated)
	}
	if !hasVersions || !hasOutbox {
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
