package main

import (
	"context"
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
