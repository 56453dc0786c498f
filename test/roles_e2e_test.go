package test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// Least privilege end to end: an application with insert-only rights
// (keyed and unkeyed rows, plain SQL and outbox.Enqueue), a relay process
// and an inbox consumer, each under the role `relay migrate` granted, in
// a schema of their own; no superuser past the setup of the roles.
func TestLeastPrivilegeRoles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := testenv.Services(t)
	admin, err := pgxpool.New(ctx, env.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close) // last: the roles are dropped through it

	owner, ownerURL := testenv.LoginRole(t, admin, env.DatabaseURL, "owner")
	app, appURL := testenv.LoginRole(t, admin, env.DatabaseURL, "app")
	relayRole, relayURL := testenv.LoginRole(t, admin, env.DatabaseURL, "relay")
	consumerRole, consumerURL := testenv.LoginRole(t, admin, env.DatabaseURL, "consumer")
	schema := testenv.Name("relay")
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema+" AUTHORIZATION "+owner); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})

	// The owner (no superuser, no CREATE on the database) migrates and grants.
	out, code := relayCmd(t, []string{"RELAY_DATABASE_URL=" + ownerURL, "RELAY_SCHEMA=" + schema}, "migrate",
		"--app-role", app, "--relay-role", relayRole, "--consumer-role", consumerRole)
	if code != 0 || !strings.Contains(out, "migrate: granted") {
		t.Fatalf("relay migrate as %s: exit %d\n%s", owner, code, out)
	}
	ownerPool := testenv.Pool(t, ownerURL)
	applied := pgx.Identifier{schema, "applied"}.Sanitize()
	if _, err := ownerPool.Exec(ctx, "CREATE TABLE "+applied+" (message_id text PRIMARY KEY, body text NOT NULL); GRANT INSERT ON "+
		applied+" TO "+consumerRole); err != nil {
		t.Fatal(err)
	}

	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Name("roles")
	topo := inbox.Topology{Queue: queue, RetryDelays: []time.Duration{50 * time.Millisecond}, DeliveryLimit: -1}
	if err := inbox.DeclareTopology(ctx, ch, topo); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, q := range []string{queue, inbox.DeadQueue(queue), inbox.RetryQueue(queue, topo.RetryDelays[0])} {
			_, _ = ch.QueueDelete(q, false, false, false)
		}
	})

	// The application: plain SQL (keyed, with RETURNING) and Enqueue
	// (keyed and unkeyed), on a connection whose search_path is its own.
	appPool := testenv.Pool(t, appURL)
	table := pgx.Identifier{schema, "outbox"}.Sanitize()
	var firstID int64
	if err := appPool.QueryRow(ctx, "INSERT INTO "+table+" (routing_key, payload, ordering_key) VALUES ($1, 'sql keyed', 'k1') RETURNING id",
		queue).Scan(&firstID); err != nil {
		t.Fatalf("keyed plain-SQL insert as the application role: %v", err)
	}
	if _, err := appPool.Exec(ctx, "INSERT INTO "+table+" (routing_key, payload) VALUES ($1, 'sql unkeyed')", queue); err != nil {
		t.Fatalf("unkeyed plain-SQL insert as the application role: %v", err)
	}
	if _, err := (outbox.Table{Schema: schema}).Enqueue(ctx, appPool,
		outbox.Message{RoutingKey: queue, Payload: []byte("go keyed"), OrderingKey: "k1"},
		outbox.Message{RoutingKey: queue, Payload: []byte("go unkeyed")}); err != nil {
		t.Fatalf("outbox.Enqueue as the application role: %v", err)
	}
	// ... and nothing more: no reading payloads, no marking rows.
	for _, q := range []string{"SELECT payload FROM " + table, "UPDATE " + table + " SET attempts = 0", "DELETE FROM " + table} {
		if _, err := appPool.Exec(ctx, q); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("%s as the application role: %v, want permission denied", q, err)
		}
	}

	// The consumer, under its role, writes its table and the inbox.
	consumerPool := testenv.Pool(t, consumerURL)
	consumer, err := inbox.New(inbox.Config{
		Queue: queue, Name: "roles-test", DB: consumerPool, Schema: schema, AMQPURLs: []string{env.AMQPURL},
		RetryDelays: topo.RetryDelays, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Handler: func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
			_, err := tx.Exec(ctx, "INSERT INTO "+applied+" VALUES ($1, $2)", m.ID, string(m.Body))
			return err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, consumer)

	// The relay, under its role, publishes all four rows. It polls once
	// an hour, so a later row is published only if the relay listens on
	// its schema's channel: its listen_database_url (no search_path) must
	// not decide the channel, the schema setting does.
	startRelay(t, "RELAY_DATABASE_URL="+relayURL, "RELAY_SCHEMA="+schema, "RELAY_AMQP_URL="+env.AMQPURL,
		"RELAY_LISTEN_DATABASE_URL="+relayURL, "RELAY_POLL_INTERVAL=1h")
	appliedRows := func(want int) func() (bool, error) {
		return func() (bool, error) {
			var n int
			err := ownerPool.QueryRow(ctx, "SELECT count(*) FROM "+applied).Scan(&n)
			return n == want, err
		}
	}
	testenv.Eventually(t, 30*time.Second, "the four rows applied by the consumer", appliedRows(4))
	if _, err := (outbox.Table{Schema: schema}).Enqueue(ctx, appPool, outbox.Message{RoutingKey: queue, Payload: []byte("woken")}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "a row inserted later applied (the relay woken by its notification)", appliedRows(5))
	// The consumer may apply a message before the relay's mark commits.
	testenv.Eventually(t, 30*time.Second, "the five rows marked published", func() (bool, error) {
		var n int
		err := ownerPool.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE published_at IS NOT NULL").Scan(&n)
		return n == 5, err
	})
	var inboxRows int
	if err := ownerPool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "inbox"}.Sanitize()).Scan(&inboxRows); err != nil || inboxRows != 5 {
		t.Errorf("inbox rows: %d (%v), want 5", inboxRows, err)
	}
	// The operations commands work under the relay's role too.
	if out, code := relayCmd(t, []string{"RELAY_DATABASE_URL=" + relayURL, "RELAY_SCHEMA=" + schema}, "status"); code != 0 {
		t.Errorf("relay status as the relay role: exit %d\n%s", code, out)
	}
}
