package migrations_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/migrations"
)

// message_id stays unique among the rows applications write, so an
// application's duplicate is refused and its ON CONFLICT clause naming
// the index's predicate (as docs/console.md tells it to) keeps working,
// while a replay copy (replay_of set) may repeat its original's id. An
// application role cannot write replay_of to slip past the index.
func TestMessageIDUniqueAmongApplicationRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := testenv.NewSchema(t, true)
	admin := testenv.Pool(t, dsn)
	schema := testenv.CurrentSchema(t, dsn)
	app, appURL := testenv.LoginRole(t, admin, dsn, "app")
	if _, err := admin.Exec(ctx, migrations.Grants(schema, migrations.Roles{App: app})); err != nil {
		t.Fatal(err)
	}
	pool := testenv.Pool(t, appURL)
	const mid = "9b2f7c1e-3a4d-4e5f-8a6b-7c8d9e0f1a2b"
	insert := `INSERT INTO outbox (message_id, routing_key, payload) VALUES ($1, 'q', convert_to('{}', 'UTF8'))`
	if _, err := pool.Exec(ctx, insert, mid); err != nil {
		t.Fatal(err)
	}

	codeOf := func(err error) (string, string) {
		var pg *pgconn.PgError
		if errors.As(err, &pg) {
			return pg.Code, pg.ConstraintName
		}
		return "", ""
	}
	if code, constraint := codeOf(func() error { _, err := pool.Exec(ctx, insert, mid); return err }()); code != "23505" || constraint != "outbox_message_id_key" {
		t.Errorf("an application's second row with message id %s: SQLSTATE %q on %q, want 23505 on outbox_message_id_key", mid, code, constraint)
	}
	tag, err := pool.Exec(ctx, insert+` ON CONFLICT (message_id) WHERE replay_of IS NULL DO NOTHING`, mid)
	if err != nil || tag.RowsAffected() != 0 {
		t.Errorf("ON CONFLICT (message_id) WHERE replay_of IS NULL DO NOTHING: %v, %d row(s); want no error, 0 rows", err, tag.RowsAffected())
	}
	// Without the predicate PostgreSQL finds no index to infer: the
	// change applications must make, as the CHANGELOG says.
	if _, err := pool.Exec(ctx, insert+` ON CONFLICT (message_id) DO NOTHING`, mid); func() string { c, _ := codeOf(err); return c }() != "42P10" {
		t.Errorf("ON CONFLICT (message_id) without the predicate: %v, want SQLSTATE 42P10", err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (message_id, routing_key, payload, replay_of)
VALUES ($1, 'q', 'x', 1)`, mid); func() string { c, _ := codeOf(err); return c }() != "42501" {
		t.Errorf("an application role writing replay_of: %v, want SQLSTATE 42501 (no grant)", err)
	}

	// A same-id replay copy, as relay replay writes it, is accepted, and
	// the application rows' index still holds one row for the id.
	if _, err := admin.Exec(ctx, `INSERT INTO outbox (message_id, routing_key, payload, replay_of)
SELECT message_id, routing_key, payload, id FROM outbox WHERE message_id = $1`, mid); err != nil {
		t.Fatalf("a replay copy repeating message id %s: %v", mid, err)
	}
	var originals, copies int
	if err := admin.QueryRow(ctx, `SELECT count(*) FILTER (WHERE replay_of IS NULL), count(*) FILTER (WHERE replay_of IS NOT NULL)
FROM outbox WHERE message_id = $1`, mid).Scan(&originals, &copies); err != nil || originals != 1 || copies != 1 {
		t.Fatalf("rows with message id %s: %d original(s), %d copy(ies) (%v); want 1 and 1", mid, originals, copies, err)
	}
}
