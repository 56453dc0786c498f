package migrations

import (
	"fmt"
	"strings"

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

// Grants returns the GRANT statements giving each named role what it
// needs on the relay's tables in schema, and nothing more:
//
//   - App: INSERT on outbox; SELECT on id and message_id only, for INSERT
//     ... RETURNING; USAGE on the id sequence, because the ordering
//     trigger draws a keyed row's id itself after taking its key's lock
//     (an identity default needs no grant, the trigger's nextval does).
//   - Relay: SELECT, UPDATE, DELETE on outbox (claims lock rows with FOR
//     UPDATE, marks, retention deletes) and SELECT on VersionTable (the
//     start check). LISTEN and the status queries need nothing more.
//   - Consumer: SELECT, INSERT, DELETE on inbox (the inbox row, and
//     retention).
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
// Each also gets USAGE on the schema. Nothing is granted to PUBLIC.
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
	grant(r.App, "application: writes outbox rows",
		"GRANT INSERT ON "+q("outbox"),
		"GRANT SELECT (id, message_id) ON "+q("outbox"),
		"GRANT USAGE ON SEQUENCE "+q("outbox_id_seq"))
	audit := []string{
		"GRANT SELECT, INSERT (via, action, filter, rows, finished_at), UPDATE (rows, finished_at) ON " + q("relay_audit"),
	}
	grant(r.Relay, "relay: claims, marks and deletes outbox rows; the operations commands (replay inserts copies)",
		append([]string{"GRANT SELECT, INSERT, UPDATE, DELETE ON " + q("outbox"),
			"GRANT USAGE ON SEQUENCE " + q("outbox_id_seq"),
			"GRANT SELECT ON " + q(VersionTable)}, audit...)...)
	grant(r.Consumer, "consumer: the inbox table",
		"GRANT SELECT, INSERT, DELETE ON "+q("inbox"))
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
