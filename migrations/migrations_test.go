package migrations_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/migrations"
)

func TestCheck(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := testenv.NewSchema(t, false)
	pool := testenv.Pool(t, dsn)

	err := migrations.Check(ctx, pool)
	if !errors.Is(err, migrations.ErrNotMigrated) || !strings.Contains(err.Error(), "has no relay tables") ||
		!strings.Contains(err.Error(), "relay migrate") {
		t.Fatalf("empty schema: got %v, want ErrNotMigrated naming relay migrate", err)
	}

	res, err := migrations.Up(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if err := migrations.Check(ctx, pool); err != nil {
		t.Fatalf("migrated schema: %v", err)
	}

	// An older binary migrated this schema: its last version is missing.
	if _, err := pool.Exec(ctx, `DELETE FROM `+migrations.VersionTable+` WHERE version_id = $1`, res.Version); err != nil {
		t.Fatal(err)
	}
	err = migrations.Check(ctx, pool)
	if !errors.Is(err, migrations.ErrNotMigrated) || !strings.Contains(err.Error(), "this binary needs") {
		t.Fatalf("older schema: got %v, want ErrNotMigrated", err)
	}
	if _, err := migrations.Up(ctx, dsn); err != nil {
		t.Fatal(err)
	}

	// goose (v2 and the CLI) records a down as a later row with is_applied
	// false: the latest row of a version decides.
	if _, err := pool.Exec(ctx, `INSERT INTO `+migrations.VersionTable+` (version_id, is_applied) VALUES ($1, false)`, res.Version); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Check(ctx, pool); !errors.Is(err, migrations.ErrNotMigrated) {
		t.Fatalf("version %d rolled back: got %v, want ErrNotMigrated", res.Version, err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM `+migrations.VersionTable+` WHERE version_id = $1`, res.Version); err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.Up(ctx, dsn); err != nil {
		t.Fatal(err)
	}

	// A newer binary migrated it further: still fine for this one.
	if _, err := pool.Exec(ctx, `INSERT INTO `+migrations.VersionTable+` (version_id, is_applied) VALUES (99999, true)`); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Check(ctx, pool); err != nil {
		t.Fatalf("newer schema: %v", err)
	}
}

func TestCheckReturnsDatabaseErrors(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	if err := migrations.Check(ctx, pool); err == nil || errors.Is(err, migrations.ErrNotMigrated) {
		t.Fatalf("a failed query must come back as itself, not as not migrated: %v", err)
	}
}
