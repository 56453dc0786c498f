package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// lookAlikes are functions and operators a producer plants in a schema on
// everyone's search_path: each is a better match than pg_catalog's for a
// call without exact types (an integer literal for a bigint, a text for a
// regclass, a bigint times an interval, unnest of a typed array), does
// what pg_catalog's does, and first notes who ran it in side_effect.
// %[1]s is the schema.
const lookAlikes = `
CREATE TABLE %[1]s.side_effect (who text NOT NULL DEFAULT current_user, what text NOT NULL);
GRANT INSERT ON %[1]s.side_effect TO PUBLIC;
CREATE FUNCTION %[1]s.spy(what text) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO %[1]s.side_effect (what) VALUES (what) $$;
CREATE FUNCTION %[1]s.hashtextextended(t text, seed integer) RETURNS bigint LANGUAGE plpgsql
    AS $$ BEGIN PERFORM %[1]s.spy('hashtextextended(text, integer)'); RETURN pg_catalog.hashtextextended(t, seed::bigint); END $$;
CREATE FUNCTION %[1]s.nextval(s text) RETURNS bigint LANGUAGE plpgsql
    AS $$ BEGIN PERFORM %[1]s.spy('nextval(text)'); RETURN pg_catalog.nextval(s::regclass); END $$;
CREATE FUNCTION %[1]s.pg_advisory_xact_lock(k integer) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN PERFORM %[1]s.spy('pg_advisory_xact_lock(integer)'); PERFORM pg_catalog.pg_advisory_xact_lock(k::bigint); END $$;
CREATE FUNCTION %[1]s.unnest(a bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql
    AS $$ BEGIN PERFORM %[1]s.spy('unnest(bigint[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
CREATE FUNCTION %[1]s.unnest(a text[]) RETURNS SETOF text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM %[1]s.spy('unnest(text[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
CREATE FUNCTION %[1]s.unnest(a boolean[]) RETURNS SETOF boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM %[1]s.spy('unnest(boolean[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
CREATE FUNCTION %[1]s.times(n bigint, i interval) RETURNS interval LANGUAGE plpgsql
    AS $$ BEGIN PERFORM %[1]s.spy('bigint * interval'); RETURN n::float8 OPERATOR(pg_catalog.*) i; END $$;
CREATE OPERATOR %[1]s.* (LEFTARG = bigint, RIGHTARG = interval, FUNCTION = %[1]s.times);
CREATE FUNCTION %[1]s.times(n integer, i interval) RETURNS interval LANGUAGE plpgsql
    AS $$ BEGIN PERFORM %[1]s.spy('integer * interval'); RETURN n::float8 OPERATOR(pg_catalog.*) i; END $$;
CREATE OPERATOR %[1]s.* (LEFTARG = integer, RIGHTARG = interval, FUNCTION = %[1]s.times);
CREATE FUNCTION %[1]s.times(n numeric, i interval) RETURNS interval LANGUAGE plpgsql
    AS $$ BEGIN PERFORM %[1]s.spy('numeric * interval'); RETURN n::float8 OPERATOR(pg_catalog.*) i; END $$;
CREATE OPERATOR %[1]s.* (LEFTARG = numeric, RIGHTARG = interval, FUNCTION = %[1]s.times);
CREATE FUNCTION %[1]s.plus(a timestamptz, b interval) RETURNS timestamptz LANGUAGE plpgsql
    AS $$ BEGIN PERFORM %[1]s.spy('timestamptz + interval'); RETURN a OPERATOR(pg_catalog.+) b; END $$;
CREATE FUNCTION %[1]s.gen_random_uuid() RETURNS uuid LANGUAGE plpgsql
    AS $$ BEGIN PERFORM %[1]s.spy('gen_random_uuid()'); RETURN pg_catalog.gen_random_uuid(); END $$;
`

// A database where every role may create objects in the schema that holds
// the relay's tables (PostgreSQL 14's public, or a database upgraded from
// it): a producer plants look-alikes of the functions and operators the
// trigger and the relay use. Another producer's inserts (plain SQL,
// keyed and unkeyed, outbox_enqueue, outbox.Enqueue), the relay's claims,
// marks of a failing row, retention, and the status, dead and requeue
// commands run as other roles with that schema on their search_path, and
// none of them ever runs a look-alike: the side-effect table stays empty.
func TestLookAlikesOnTheSearchPathNeverRun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := testenv.Services(t)
	admin, err := pgxpool.New(ctx, env.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close) // last: the roles are dropped through it

	owner, ownerURL := testenv.LoginRole(t, admin, env.DatabaseURL, "owner")
	attacker, attackerURL := testenv.LoginRole(t, admin, env.DatabaseURL, "attacker")
	victim, victimURL := testenv.LoginRole(t, admin, env.DatabaseURL, "victim")
	relayRole, relayURL := testenv.LoginRole(t, admin, env.DatabaseURL, "relay")
	schema := testenv.Name("pub")
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema+" AUTHORIZATION "+owner+"; GRANT CREATE, USAGE ON SCHEMA "+schema+" TO PUBLIC"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	// Every role finds the schema on its search_path, as public is.
	for _, r := range []string{owner, attacker, victim, relayRole} {
		if _, err := admin.Exec(ctx, "ALTER ROLE "+r+" SET search_path = "+schema); err != nil {
			t.Fatal(err)
		}
	}
	for _, app := range []string{attacker, victim} {
		out, code := relayCmd(t, []string{"RELAY_DATABASE_URL=" + ownerURL, "RELAY_SCHEMA=" + schema}, "migrate",
			"--app-role", app, "--relay-role", relayRole)
		if code != 0 {
			t.Fatalf("relay migrate: exit %d\n%s", code, out)
		}
	}

	attackerPool := testenv.Pool(t, attackerURL)
	if _, err := attackerPool.Exec(ctx, strings.ReplaceAll(lookAlikes, "%[1]s", pgx.Identifier{schema}.Sanitize())); err != nil {
		t.Fatalf("plant the look-alikes: %v", err)
	}
	sideEffect := pgx.Identifier{schema, "side_effect"}.Sanitize()
	effects := func() []string {
		t.Helper()
		rows, err := admin.Query(ctx, "SELECT who || ': ' || what FROM "+sideEffect+" ORDER BY 1")
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	// The trap works: a call without exact types runs the look-alike, as
	// the role that makes it.
	victimPool := testenv.Pool(t, victimURL)
	if _, err := victimPool.Exec(ctx, "SELECT hashtextextended('x', 0), now() + 2::bigint * interval '1 s'"); err != nil {
		t.Fatal(err)
	}
	if got := effects(); len(got) != 2 || !strings.HasPrefix(got[0], victim+": ") {
		t.Fatalf("the look-alikes did not run for an unpinned call: %q", got)
	}
	if _, err := admin.Exec(ctx, "TRUNCATE "+sideEffect); err != nil {
		t.Fatal(err)
	}

	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, false)
	for _, q := range []string{
		"INSERT INTO outbox (routing_key, payload) VALUES ($1, 'plain')",
		"INSERT INTO outbox (routing_key, payload, ordering_key) VALUES ($1, 'keyed', 'k1')",
		"INSERT INTO outbox (routing_key, payload, ordering_key) VALUES ($1, 'keyed again', 'k1')",
		"SELECT outbox_enqueue('', $1::text, '{\"via\": \"outbox_enqueue\"}'::jsonb, ordering_key => 'k2')",
		"INSERT INTO outbox (exchange, routing_key, payload) VALUES ('no-such-exchange', $1, 'fails')",
	} {
		if _, err := victimPool.Exec(ctx, q, queue); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if _, err := (outbox.Table{Schema: schema}).Enqueue(ctx, victimPool,
		outbox.Message{RoutingKey: queue, Payload: []byte("go")},
		outbox.Message{RoutingKey: queue, Payload: []byte("go keyed"), OrderingKey: "k1"}); err != nil {
		t.Fatal(err)
	}
	const good = 6

	relayEnv := []string{"RELAY_DATABASE_URL=" + relayURL, "RELAY_SCHEMA=" + schema}
	startRelay(t, append(relayEnv, "RELAY_AMQP_URL="+env.AMQPURL, "RELAY_PARK_UNROUTABLE=true",
		"RELAY_RETENTION=1ms", "RELAY_RETENTION_INTERVAL=50ms")...)
	ownerPool := testenv.Pool(t, ownerURL)
	// Retention deletes the published rows; the failing one is dead.
	testenv.Eventually(t, time.Minute, "the good rows published and deleted, the failing one dead", func() (bool, error) {
		var left, dead int
		err := ownerPool.QueryRow(ctx, "SELECT count(*), count(*) FILTER (WHERE dead_at IS NOT NULL) FROM outbox").Scan(&left, &dead)
		return left == 1 && dead == 1, err
	})
	q, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
	if err != nil || q.Messages != good {
		t.Errorf("queue holds %d messages (%v), want %d", q.Messages, err, good)
	}
	for _, args := range [][]string{{"status"}, {"dead"}, {"requeue", "--all"}} {
		if out, code := relayCmd(t, relayEnv, args...); code != 0 {
			t.Errorf("relay %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
	}
	testenv.Eventually(t, time.Minute, "the requeued row failing again", func() (bool, error) {
		var attempts int
		err := ownerPool.QueryRow(ctx, "SELECT attempts FROM outbox WHERE dead_at IS NOT NULL").Scan(&attempts)
		return attempts == 1, err
	})
	if got := effects(); len(got) != 0 {
		t.Errorf("look-alikes ran: %q", got)
	}
}
