package migrations_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/migrations"
)

// sharedSchema is a migrated schema with an application role and two
// consumer roles granted as `relay migrate` grants them (consumer A runs
// the inbox consumer "orders-a", B runs "orders-b").
type sharedSchema struct {
	schema     string
	admin      *pgxpool.Pool // superuser, search_path the schema
	app        *pgxpool.Pool
	consumerA  *pgxpool.Pool
	consumerB  *pgxpool.Pool
	appRole    string
	outbox     string // the qualified table names
	inbox      string
	targetsSQL func(migrations.Targets) string
}

func setupShared(t *testing.T) sharedSchema {
	t.Helper()
	ctx := context.Background()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	schema := testenv.CurrentSchema(t, dsn)
	admin := testenv.Pool(t, dsn)
	root := testenv.Pool(t, env.DatabaseURL) // drops the roles last
	app, appURL := testenv.LoginRole(t, root, env.DatabaseURL, "app")
	a, aURL := testenv.LoginRole(t, root, env.DatabaseURL, "cons_a")
	b, bURL := testenv.LoginRole(t, root, env.DatabaseURL, "cons_b")
	for _, r := range []migrations.Roles{
		{App: app},
		{Consumer: a, Consumers: []string{"orders-a"}},
		{Consumer: b, Consumers: []string{"orders-b"}},
	} {
		if err := r.Validate(); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Exec(ctx, migrations.Grants(schema, r)); err != nil {
			t.Fatalf("grants %+v: %v", r, err)
		}
	}
	return sharedSchema{
		schema: schema, admin: admin, appRole: app,
		app:       testenv.Pool(t, appURL),
		consumerA: testenv.Pool(t, aURL),
		consumerB: testenv.Pool(t, bURL),
		outbox:    pgx.Identifier{schema, "outbox"}.Sanitize(),
		inbox:     pgx.Identifier{schema, "inbox"}.Sanitize(),
		targetsSQL: func(tg migrations.Targets) string {
			return migrations.TargetsSQL(schema, tg)
		},
	}
}

func sqlState(err error) string {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pg.Code
	}
	return ""
}

// An application role may write the message's columns and nothing of the
// relay's: every bookkeeping column and an explicit id is refused, by the
// column grants, and by the insert trigger for a role granted INSERT on
// every column by hand (as `relay migrate` did before 0.x).
func TestApplicationCannotWriteBookkeeping(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := setupShared(t)
	var nextID int64
	if err := s.admin.QueryRow(ctx, "SELECT coalesce(max(id), 0) + 1000 FROM "+s.outbox).Scan(&nextID); err != nil {
		t.Fatal(err)
	}
	hostile := []string{
		"INSERT INTO %s (routing_key, payload, attempts) VALUES ('q', 'x', 2147483647)",
		"INSERT INTO %s (routing_key, payload, attempts) VALUES ('q', 'x', -5)",
		"INSERT INTO %s (routing_key, payload, suspected) VALUES ('q', 'x', true)",
		"INSERT INTO %s (routing_key, payload, dead_at) VALUES ('q', 'x', now())",
		"INSERT INTO %s (routing_key, payload, published_at) VALUES ('q', 'x', now())",
		"INSERT INTO %s (routing_key, payload, last_error) VALUES ('q', 'x', 'forged')",
		"INSERT INTO %s (routing_key, payload, created_at) VALUES ('q', 'x', now() - interval '1 day')",
		"INSERT INTO %s (id, routing_key, payload) OVERRIDING SYSTEM VALUE VALUES (" + itoa(nextID) + ", 'q', 'x')",
		"INSERT INTO %s (id, routing_key, payload, ordering_key) OVERRIDING SYSTEM VALUE VALUES (" + itoa(nextID+1) + ", 'q', 'x', 'k')",
		// A replay copy may repeat a message id: the unique index leaves
		// copies out.
		"INSERT INTO %s (message_id, routing_key, payload, replay_of) SELECT message_id, 'q', 'x', id FROM %s LIMIT 1",
	}
	// The message columns are enough for every message.
	if _, err := s.app.Exec(ctx, "INSERT INTO "+s.outbox+` (message_id, exchange, routing_key, payload, content_type, headers,
		ordering_key, available_at, type, correlation_id, reply_to, expiration, priority, app_id)
		VALUES (gen_random_uuid(), '', 'q', 'x', 'text/plain', '{"a": 1}', 'k', now(), 't', 'c', 'r', '1000', 1, 'app')`); err != nil {
		t.Fatalf("insert of every message column as the application: %v", err)
	}
	for _, q := range hostile {
		q = strings.ReplaceAll(q, "%s", s.outbox)
		if _, err := s.app.Exec(ctx, q); sqlState(err) != "42501" {
			t.Errorf("granted role: %s: %v, want permission denied (42501)", q, err)
		}
	}
	// A role given INSERT on every column by hand: the trigger refuses.
	if _, err := s.admin.Exec(ctx, "GRANT INSERT ON "+s.outbox+" TO "+s.appRole); err != nil {
		t.Fatal(err)
	}
	for _, q := range hostile {
		q = strings.ReplaceAll(q, "%s", s.outbox)
		_, err := s.app.Exec(ctx, q)
		if sqlState(err) != "42501" || !strings.Contains(err.Error(), "is the relay's") {
			t.Errorf("hand-granted role: %s: %v, want the trigger's refusal", q, err)
		}
	}
	var n int
	if err := s.admin.QueryRow(ctx, "SELECT count(*) FROM "+s.outbox+
		" WHERE attempts <> 0 OR suspected OR dead_at IS NOT NULL OR published_at IS NOT NULL OR last_error IS NOT NULL OR replay_of IS NOT NULL OR id >= $1",
		nextID).Scan(&n); err != nil || n != 0 {
		t.Errorf("rows with bookkeeping written by the application: %d (%v)", n, err)
	}
	// The owner (who may UPDATE the table anyway) still may.
	if _, err := s.admin.Exec(ctx, "INSERT INTO "+s.outbox+" (routing_key, payload, dead_at, attempts) VALUES ('q', 'x', now(), 3)"); err != nil {
		t.Errorf("the owner's insert of a dead row: %v", err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// Rows may only go where the operator allows, and never to the inbox's
// own queues through the default exchange; reserved headers, long or
// control-character keys and header text over its limit are refused at
// insert.
func TestInsertRefusesTargetsAndReservedHeaders(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := setupShared(t)
	insert := func(exchange, routingKey, headers string, key any) error {
		_, err := s.app.Exec(ctx, "INSERT INTO "+s.outbox+" (exchange, routing_key, payload, headers, ordering_key) VALUES ($1, $2, 'x', $3, $4)",
			exchange, routingKey, headers, key)
		return err
	}
	refused := func(what string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error naming %q", what, err, want)
		}
	}
	// No allow-list: any exchange, but not the inbox's queues.
	if err := insert("events", "anything", "{}", nil); err != nil {
		t.Errorf("no allow-list, exchange events: %v", err)
	}
	refused("orders.dead", insert("", "orders.dead", "{}", nil), "not an allowed target")
	refused("orders.retry.500ms", insert("", "orders.retry.500ms", "{}", nil), "not an allowed target")
	refused("orders.retry.5m", insert("", "orders.retry.5m", "{}", nil), "not an allowed target")
	if err := insert("", "orders.retry.later", "{}", nil); err != nil {
		t.Errorf("a queue that is no retry queue: %v", err)
	}
	for _, h := range []string{`{"x-inbox-attempts": 1}`, `{"X-Death": []}`, `{"CC": ["other"]}`, `{"bcc": ["q"]}`, `{"x-first-death-queue": "q"}`} {
		refused(h, insert("", "orders", h, nil), "outbox_headers_reserved")
	}
	refused("a 256-byte key", insert("", "orders", "{}", strings.Repeat("k", 256)), "outbox_ordering_key_shortstr")
	refused("a key with a newline", insert("", "orders", "{}", "a\nb"), "outbox_ordering_key_shortstr")
	// 43,700 control characters: under the AMQP header budget (one byte
	// each) but 262,200 bytes of jsonb text.
	refused("control characters", insert("", "orders", `{"h": "`+strings.Repeat(`\u0001`, 43700)+`"}`, nil), "outbox_headers_text_size")

	// An allow-list: exchange events (any key), queue orders, and the dead
	// queue named explicitly. A pending row to another target is parked.
	if _, err := s.admin.Exec(ctx, "INSERT INTO "+s.outbox+" (exchange, routing_key, payload) VALUES ('other', 'k', 'x')"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.admin.Exec(ctx, s.targetsSQL(migrations.Targets{Exchanges: []string{"events"}, Queues: []string{"orders", "audit.dead"}})); err != nil {
		t.Fatal(err)
	}
	var parked string
	if err := s.admin.QueryRow(ctx, "SELECT last_error FROM "+s.outbox+" WHERE exchange = 'other' AND dead_at IS NOT NULL").Scan(&parked); err != nil ||
		!strings.HasPrefix(parked, "refused_target:") {
		t.Errorf("the pending row to exchange other: %q (%v), want parked as refused_target", parked, err)
	}
	for _, ok := range [][2]string{{"events", "a"}, {"events", "b"}, {"", "orders"}, {"", "audit.dead"}} {
		if err := insert(ok[0], ok[1], "{}", nil); err != nil {
			t.Errorf("allowed %q %q: %v", ok[0], ok[1], err)
		}
	}
	for _, no := range [][2]string{{"other", "a"}, {"", "payments"}, {"", "orders.dead"}, {"amq.topic", "orders"}} {
		refused(no[0]+" "+no[1], insert(no[0], no[1], "{}", nil), "not an allowed target")
	}
	// Not even the owner gets past the allow-list.
	if _, err := s.admin.Exec(ctx, "INSERT INTO "+s.outbox+" (exchange, routing_key, payload) VALUES ('other', 'k', 'x')"); err == nil {
		t.Error("the owner's insert to a target not allowed was accepted")
	}
	// "*" lifts the list.
	if _, err := s.admin.Exec(ctx, s.targetsSQL(migrations.Targets{Exchanges: []string{"*"}})); err != nil {
		t.Fatal(err)
	}
	if err := insert("other", "a", "{}", nil); err != nil {
		t.Errorf("allowed_exchanges *: %v", err)
	}
	refused("orders.dead under *", insert("", "orders.dead", "{}", nil), "not an allowed target")
}

// Under the inbox's row-level security a consumer role touches only the
// rows of the consumer names registered to it.
func TestInboxConsumersIsolated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := setupShared(t)
	for _, c := range []struct {
		pool *pgxpool.Pool
		name string
	}{{s.consumerA, "orders-a"}, {s.consumerB, "orders-b"}} {
		if _, err := c.pool.Exec(ctx, "INSERT INTO "+s.inbox+" (consumer, message_id) VALUES ($1, 'm1')", c.name); err != nil {
			t.Fatalf("%s's own inbox row: %v", c.name, err)
		}
	}
	var n int
	if err := s.consumerA.QueryRow(ctx, "SELECT count(*) FROM "+s.inbox+" WHERE consumer = 'orders-b'").Scan(&n); err != nil || n != 0 {
		t.Errorf("A reads B's rows: %d (%v), want 0", n, err)
	}
	if err := s.consumerA.QueryRow(ctx, "SELECT count(*) FROM "+s.inbox).Scan(&n); err != nil || n != 1 {
		t.Errorf("A sees %d rows (%v), want its own 1", n, err)
	}
	if _, err := s.consumerA.Exec(ctx, "INSERT INTO "+s.inbox+" (consumer, message_id) VALUES ('orders-b', 'm2')"); sqlState(err) != "42501" {
		t.Errorf("A inserts a row of B: %v, want a row-level security refusal", err)
	}
	if _, err := s.consumerA.Exec(ctx, "INSERT INTO "+s.inbox+" (consumer, message_id) VALUES ('unregistered', 'm2')"); sqlState(err) != "42501" {
		t.Errorf("A inserts a row of an unregistered consumer: %v, want a refusal", err)
	}
	tag, err := s.consumerA.Exec(ctx, "DELETE FROM "+s.inbox+" WHERE consumer = 'orders-b'")
	if err != nil || tag.RowsAffected() != 0 {
		t.Errorf("A deletes B's rows: %d (%v), want 0", tag.RowsAffected(), err)
	}
	if err := s.admin.QueryRow(ctx, "SELECT count(*) FROM "+s.inbox+" WHERE consumer = 'orders-b'").Scan(&n); err != nil || n != 1 {
		t.Errorf("B's rows after A's attempts: %d (%v), want 1", n, err)
	}
	// A role that cannot register names (no privilege on inbox_consumer).
	if _, err := s.consumerA.Exec(ctx, "UPDATE "+pgx.Identifier{s.schema, "inbox_consumer"}.Sanitize()+" SET role = current_user::regrole"); sqlState(err) != "42501" {
		t.Errorf("A re-registers the names: %v, want permission denied", err)
	}
}

func TestGrantsRefusePublic(t *testing.T) {
	t.Parallel()
	for _, r := range []migrations.Roles{{App: "public"}, {Relay: "PUBLIC"}, {Consumer: "Public"}, {Consumers: []string{"x"}}} {
		if err := r.Validate(); err == nil {
			t.Errorf("%+v: Validate accepted it", r)
		}
	}
	if err := (migrations.Roles{App: "app", Consumer: "c", Consumers: []string{"orders"}}).Validate(); err != nil {
		t.Errorf("ordinary roles: %v", err)
	}
}
