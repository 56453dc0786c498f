package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"hash/fnv"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var files embed.FS

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
