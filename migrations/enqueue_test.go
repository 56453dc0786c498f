package migrations_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/migrations"
)

// enqueueHint is the hint of every payload refusal: it names the fix.
const enqueueHint = "Pass JSON as text: outbox_enqueue(exchange, routing_key, payload => json_text), or " +
	"convert_to(json_text, 'UTF8') in an INSERT; a string sent for a bytea is read as bytea escapes. " +
	"Or set content_type to what the payload is (application/octet-stream)."

// outbox_enqueue stores a text payload as its UTF-8 bytes (backslashes as
// written), jsonb as its text and bytea as is, returns the row's id and
// message_id, and refuses what a JSON content type cannot carry, with
// the whole message naming the fix. It runs with the rights --app-role
// grants, and nothing more.
func TestEnqueueFunction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	dsn := testenv.NewSchema(t, true)
	admin := testenv.Pool(t, dsn)
	schema := testenv.CurrentSchema(t, dsn)
	app, appURL := testenv.LoginRole(t, admin, dsn, "app")
	// As in a database whose default privileges revoke EXECUTE from
	// PUBLIC: the app role may run the functions only by its own grants.
	for _, f := range migrations.EnqueueFunctions {
		if _, err := admin.Exec(ctx, "REVOKE EXECUTE ON FUNCTION "+f+" FROM PUBLIC"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.Exec(ctx, migrations.Grants(schema, migrations.Roles{App: app})); err != nil {
		t.Fatal(err)
	}
	pool := testenv.Pool(t, appURL)

	payload := func(id int64) string {
		t.Helper()
		var p []byte
		if err := admin.QueryRow(ctx, `SELECT payload FROM outbox WHERE id = $1`, id).Scan(&p); err != nil {
			t.Fatal(err)
		}
		return string(p)
	}
	for _, c := range []struct {
		name, sql string
		args      []any
		want      string
	}{
		// A text parameter, as psycopg2 and node-postgres send a string.
		{"text parameter", `SELECT * FROM outbox_enqueue($1, $2, $3)`,
			[]any{"", "q", `{"path":"C:\\temp","note":"café ✓"}`}, `{"path":"C:\\temp","note":"café ✓"}`},
		// A literal, as psql sends one (standard_conforming_strings on).
		{"text literal", `SELECT * FROM outbox_enqueue('', 'q', '{"path":"C:\\temp","n":"\u00e9"}')`,
			nil, `{"path":"C:\\temp","n":"\u00e9"}`},
		{"jsonb", `SELECT * FROM outbox_enqueue('', 'q', '{"b":1,"a":"\\"}'::jsonb)`, nil, `{"a": "\\", "b": 1}`},
		{"bytea", `SELECT * FROM outbox_enqueue('', 'q', $1::bytea, content_type => 'application/octet-stream')`,
			[]any{[]byte{0xff, 0, '\\'}}, "\xff\x00\\"},
		{"JSON+suffix", `SELECT * FROM outbox_enqueue('', 'q', '[1]', content_type => 'Application/CloudEvents+JSON; charset=utf-8', ordering_key => 'k', priority => 5)`,
			nil, `[1]`},
	} {
		var id int64
		var mid string
		if err := pool.QueryRow(ctx, c.sql, c.args...).Scan(&id, &mid); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := payload(id); got != c.want || mid == "" {
			t.Errorf("%s: payload %q (message_id %q), want %q", c.name, got, mid, c.want)
		}
	}

	for _, c := range []struct {
		name, sql string
		args      []any
		msg       string
	}{
		{"not JSON", `SELECT * FROM outbox_enqueue('', 'q', 'C:\temp')`, nil,
			`outbox: payload is not valid JSON (invalid input syntax for type json: Token "C" is invalid.), but content_type 'application/json' says JSON`},
		{"cut JSON", `SELECT * FROM outbox_enqueue('', 'q', $1, content_type => 'application/json; charset=utf-8')`, []any{`{"a":`},
			`outbox: payload is not valid JSON (invalid input syntax for type json: The input string ended unexpectedly.), but content_type 'application/json; charset=utf-8' says JSON`},
		{"not UTF-8", `SELECT * FROM outbox_enqueue('', 'q', $1::bytea)`, []any{[]byte("\"\xff\"")},
			`outbox: payload is not valid UTF-8 (invalid byte sequence for encoding "UTF8": 0xff), but content_type 'application/json' says JSON`},
	} {
		_, err := pool.Exec(ctx, c.sql, c.args...)
		var pg *pgconn.PgError
		if !errors.As(err, &pg) || pg.Message != c.msg || pg.Hint != enqueueHint || pg.Code != "23514" ||
			pg.ConstraintName != "outbox_payload_json" {
			t.Errorf("%s: got %v (hint %q), want %q", c.name, err, hintOf(err), c.msg)
		}
	}

	// Plain INSERTs are checked only once the operator enables the
	// trigger: rows with the default content type and a payload that is
	// not JSON are written today.
	insert := `INSERT INTO outbox (routing_key, payload) VALUES ('q', convert_to('not json', 'UTF8'))`
	if _, err := pool.Exec(ctx, insert); err != nil {
		t.Fatalf("plain INSERT with the check disabled: %v", err)
	}
	if _, err := admin.Exec(ctx, `ALTER TABLE outbox ENABLE TRIGGER outbox_payload_check`); err != nil {
		t.Fatal(err)
	}
	_, err := pool.Exec(ctx, insert)
	var pg *pgconn.PgError
	if want := `outbox: payload is not valid JSON (invalid input syntax for type json: Token "not" is invalid.), but content_type 'application/json' says JSON`; !errors.As(err, &pg) || pg.Message != want || pg.Hint != enqueueHint {
		t.Errorf("plain INSERT with the check enabled: got %v, want %q", err, want)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (routing_key, payload, content_type) VALUES ('q', '\xff'::bytea, 'application/octet-stream')`); err != nil {
		t.Errorf("plain INSERT of bytes that do not say JSON, check enabled: %v", err)
	}
}

func hintOf(err error) string {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pg.Hint
	}
	return ""
}
