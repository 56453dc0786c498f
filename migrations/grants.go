package migrations

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// Roles names the database roles of a least-privilege setup. An empty name
// gets no grants.
type Roles struct {
	// App writes outbox rows (plain SQL or outbox.Enqueue).
	App string
	// Relay runs `relay run` and the operations commands.
	Relay string
	// Consumer runs inbox consumers (it also needs rights on the tables
	// its handlers write: those are the application's to grant).
	Consumer string
	// Consumers are the inbox consumer names (inbox.Config.Name) that
	// Consumer runs. They are registered to it in inbox_consumer: under
	// the inbox's row-level security, no other role may read, insert or
	// delete their inbox rows, and Consumer may touch no other name's.
	Consumers []string
	// Console may only look: `relay console` under it shows every view
	// and refuses every action (the database refuses them too, so a
	// hand-made request cannot act).
	Console string
	// Operator may act: requeue, retry, discard and replay, from the CLI
	// or the console, each recorded in relay_audit.
	Operator string
}

// Empty reports whether no role is named.
func (r Roles) Empty() bool {
	return r.App == "" && r.Relay == "" && r.Consumer == "" && r.Console == "" && r.Operator == ""
}

// MessageColumns are the outbox columns an application may write: the
// message. The others (id, attempts, suspected, dead_at, published_at,
// last_error, created_at) are the relay's bookkeeping.
var MessageColumns = []string{"message_id", "exchange", "routing_key", "payload", "content_type", "headers",
	"ordering_key", "available_at", "type", "correlation_id", "reply_to", "expiration", "priority", "app_id"}

// Validate refuses what Grants must not be given: PUBLIC as a role (every
// role of the database, present and future, would get it), a name
// PostgreSQL could not hold, and consumer names without a consumer role
// or that the inbox table would refuse.
func (r Roles) Validate() error {
	for _, p := range [][2]string{{"app-role", r.App}, {"relay-role", r.Relay}, {"consumer-role", r.Consumer}, {"console-role", r.Console}, {"operator-role", r.Operator}} {
		switch {
		case p[1] == "":
		case strings.EqualFold(p[1], "public"):
			return fmt.Errorf("migrations: --%s public would grant to every role of the database (PUBLIC); name the role", p[0])
		case len(p[1]) > 63 || strings.ContainsFunc(p[1], isControl):
			return fmt.Errorf("migrations: --%s %q is not a role name (at most 63 bytes, no control characters)", p[0], p[1])
		}
	}
	if len(r.Consumers) > 0 && r.Consumer == "" {
		return errors.New("migrations: --consumers needs --consumer-role (the role they are registered to)")
	}
	for _, c := range r.Consumers {
		if c == "" || len(c) > 255 || !utf8.ValidString(c) || strings.ContainsFunc(c, isControl) {
			return fmt.Errorf("migrations: consumer name %q: 1 to 255 bytes of UTF-8, no control characters", c)
		}
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// Grants returns the GRANT statements giving each named role what it
// needs on the relay's tables in schema, and nothing more:
//
//   - App: INSERT on the MessageColumns of outbox only (an earlier
//     relay's INSERT on every column is revoked first), so that it cannot
//     write the relay's bookkeeping nor an id; SELECT on id and message_id
//     only, for INSERT ... RETURNING; USAGE on the id sequence, because
//     the ordering trigger draws a keyed row's id itself after taking its
//     key's lock (an identity default needs no grant, the trigger's
//     nextval does).
//     EXECUTE on outbox_enqueue and the functions it calls
//     (EnqueueFunctions): they are SECURITY INVOKER, so they insert with
//     these same rights (granted by name, for databases whose default
//     privileges revoke EXECUTE from PUBLIC).
//   - Relay: SELECT, UPDATE, DELETE on outbox (claims lock rows with FOR
//     UPDATE, marks, retention deletes) and SELECT on VersionTable (the
//     start check). LISTEN and the status queries need nothing more.
//   - Consumer: SELECT, INSERT, DELETE on inbox (the inbox row, and
//     retention), limited by row-level security to its Consumers when any
//     are registered; SELECT on inbox_consumer, which the policy reads.
//     Each of Consumers is registered to it (moved from another role if
//     registered there).
//   - Console: SELECT on outbox, relay_audit and VersionTable: it reads.
//   - Operator: what the console has, and INSERT, UPDATE, DELETE on
//     outbox (replay inserts copies; requeue, retry and discard) with
//     USAGE on the id sequence (keyed copies draw their id in the ordering
//     trigger), and INSERT on relay_audit of every column but actor and at
//     (their defaults, session_user and now(), stand) and UPDATE of rows
//     and finished_at alone (a replay counts its rows as it goes).
//   - Relay: also the operator's rights, since the operations commands
//     run under it.
//
// Each also gets USAGE on the schema. Nothing is granted to PUBLIC. Call
// Validate first.
func Grants(schema string, r Roles) string {
	s := SearchPath(schema)
	q := func(name string) string { return s + "." + name }
	var b strings.Builder
	grant := func(role, comment string, stmts ...string) {
		if role == "" {
			return
		}
		id := pgx.Identifier{role}.Sanitize()
		fmt.Fprintf(&b, "-- %s\nGRANT USAGE ON SCHEMA %s TO %s;\n", comment, s, id)
		for _, st := range stmts {
			b.WriteString(st + " TO " + id + ";\n")
		}
	}
	if r.App != "" {
		// REVOKE of a table privilege also revokes its column grants: the
		// grant below is then the whole of it.
		fmt.Fprintf(&b, "REVOKE INSERT ON %s FROM %s;\n", q("outbox"), pgx.Identifier{r.App}.Sanitize())
	}
	grant(r.App, "application: writes outbox rows (the message columns only)", append([]string{
		"GRANT INSERT (" + strings.Join(MessageColumns, ", ") + ") ON " + q("outbox"),
		"GRANT SELECT (id, message_id, replay_of) ON " + q("outbox"), // replay_of: ON CONFLICT (message_id) WHERE replay_of IS NULL reads it
		"GRANT USAGE ON SEQUENCE " + q("outbox_id_seq")}, executeGrants(q)...)...)
	audit := []string{
		"GRANT SELECT, INSERT (via, action, filter, rows, finished_at), UPDATE (rows, finished_at) ON " + q("relay_audit"),
	}
	grant(r.Relay, "relay: claims, marks and deletes outbox rows; the operations commands (replay inserts copies)",
		append([]string{"GRANT SELECT, INSERT, UPDATE, DELETE ON " + q("outbox"),
			"GRANT USAGE ON SEQUENCE " + q("outbox_id_seq"),
			"GRANT SELECT ON " + q(VersionTable)}, audit...)...)
	grant(r.Consumer, "consumer: the inbox table, its own consumers' rows",
		"GRANT SELECT, INSERT, DELETE ON "+q("inbox"),
		"GRANT SELECT ON "+q("inbox_consumer"))
	for _, c := range r.Consumers {
		fmt.Fprintf(&b, "INSERT INTO %s (consumer, role) VALUES (%s, %s::regrole)\n    ON CONFLICT (consumer) DO UPDATE SET role = EXCLUDED.role;\n",
			q("inbox_consumer"), quoteLiteral(c), quoteLiteral(pgx.Identifier{r.Consumer}.Sanitize()))
	}
	grant(r.Console, "console: reads the outbox and the audit table, acts on nothing",
		"GRANT SELECT ON "+q("outbox"),
		"GRANT SELECT ON "+q("relay_audit"),
		"GRANT SELECT ON "+q(VersionTable))
	grant(r.Operator, "operator: requeue, retry, discard, replay, each audited",
		append([]string{"GRANT SELECT, INSERT, UPDATE, DELETE ON " + q("outbox"),
			"GRANT USAGE ON SEQUENCE " + q("outbox_id_seq"),
			"GRANT SELECT ON " + q(VersionTable)}, audit...)...)
	return b.String()
}

// quoteLiteral writes s as an SQL string literal (standard_conforming_strings
// on, as since PostgreSQL 9.1: only quotes are doubled).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Targets restricts where outbox rows may go (outbox_allowed_target, read
// by the insert trigger outbox_guard). Exchanges are named exchanges whose
// every routing key is allowed; Queues are queues allowed through the
// default exchange. "*" in Exchanges allows every exchange, the default
// one included (no restriction); in Queues every queue through the
// default exchange. Either way the inbox's own
// retry and dead-letter queues (<queue>.retry.<delay>, <queue>.dead)
// through the default exchange are refused unless Queues names them.
type Targets struct {
	Exchanges []string
	Queues    []string
}

// Set reports whether Targets says anything (an unset allow-list leaves
// the database's as it is).
func (t Targets) Set() bool { return len(t.Exchanges) > 0 || len(t.Queues) > 0 }

// Validate checks the names: AMQP short strings (1 to 255 bytes, no control
// characters), or "*".
func (t Targets) Validate() error {
	for _, l := range []struct {
		key   string
		names []string
	}{{"allowed_exchanges", t.Exchanges}, {"allowed_queues", t.Queues}} {
		for _, n := range l.names {
			if n == "" || len(n) > 255 || !utf8.ValidString(n) || strings.ContainsFunc(n, isControl) {
				return fmt.Errorf("migrations: %s: %q is not a name (1 to 255 bytes of UTF-8, no control characters)", l.key, n)
			}
		}
	}
	return nil
}

// TargetsSQL returns the statements that replace the allow-list of schema
// with t and park the pending rows it no longer allows (dead, with the
// reason as last_error), so that what a relay publishes from then on is
// what the list allows. Run them in one transaction.
func TargetsSQL(schema string, t Targets) string {
	s := SearchPath(schema)
	var b strings.Builder
	fmt.Fprintf(&b, "DELETE FROM %s.outbox_allowed_target;\n", s)
	for _, e := range t.Exchanges {
		fmt.Fprintf(&b, "INSERT INTO %s.outbox_allowed_target (exchange, routing_key) VALUES (%s, NULL);\n", s, quoteLiteral(e))
	}
	for _, q := range t.Queues {
		rk := quoteLiteral(q)
		if q == "*" {
			rk = "NULL"
		}
		fmt.Fprintf(&b, "INSERT INTO %s.outbox_allowed_target (exchange, routing_key) VALUES ('', %s);\n", s, rk)
	}
	fmt.Fprintf(&b, `UPDATE %[1]s.outbox SET dead_at = now(),
    last_error = format('refused_target: exchange %%s, routing key %%s: not an allowed target (parked by relay migrate)',
                        quote_literal(exchange), quote_literal(routing_key))
WHERE published_at IS NULL AND dead_at IS NULL AND NOT %[1]s.outbox_target_allowed(exchange, routing_key);
`, s)
	return b.String()
}

// EnqueueFunctions are the signatures of the plain-SQL insert path
// (migration 00007): outbox_enqueue in its three payload types, and the
// functions it and the opt-in payload check call with the caller's rights.
var EnqueueFunctions = []string{
	"outbox_enqueue(text, text, bytea, text, jsonb, text, timestamptz, uuid, text, text, text, text, integer, text)",
	"outbox_enqueue(text, text, text, text, jsonb, text, timestamptz, uuid, text, text, text, text, integer, text)",
	"outbox_enqueue(text, text, jsonb, text, jsonb, text, timestamptz, uuid, text, text, text, text, integer, text)",
	"outbox_payload_problem(bytea, text)",
	"outbox_refuse_payload(text, text)",
	"outbox_content_type_json(text)",
}

func executeGrants(q func(string) string) []string {
	out := make([]string, len(EnqueueFunctions))
	for i, f := range EnqueueFunctions {
		out[i] = "GRANT EXECUTE ON FUNCTION " + q(f)
	}
	return out
}
