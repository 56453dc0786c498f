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
}

// Empty reports whether no role is named.
func (r Roles) Empty() bool { return r.App == "" && r.Relay == "" && r.Consumer == "" }

// Grants returns the GRANT statements giving each named role what it
// needs on the relay's tables in schema, and nothing more:
//
//   - App: INSERT on outbox; SELECT on id and message_id only, for INSERT
//     ... RETURNING; USAGE on the id sequence, because the ordering
//     trigger draws a keyed row's id itself after taking its key's lock
//     (an identity default needs no grant, the trigger's nextval does);
//     EXECUTE on outbox_enqueue and the functions it calls (EnqueueFunctions):
//     they are SECURITY INVOKER, so they insert with these same rights
//     (granted by name, for databases whose default privileges revoke
//     EXECUTE from PUBLIC).
//   - Relay: SELECT, UPDATE, DELETE on outbox (claims lock rows with FOR
//     UPDATE, marks, retention deletes) and SELECT on VersionTable (the
//     start check). LISTEN and the status queries need nothing more.
//   - Consumer: SELECT, INSERT, DELETE on inbox (the inbox row, and
//     retention).
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
	grant(r.App, "application: writes outbox rows", append([]string{
		"GRANT INSERT ON " + q("outbox"),
		"GRANT SELECT (id, message_id) ON " + q("outbox"),
		"GRANT USAGE ON SEQUENCE " + q("outbox_id_seq")}, executeGrants(q)...)...)
	grant(r.Relay, "relay: claims, marks and deletes outbox rows",
		"GRANT SELECT, UPDATE, DELETE ON "+q("outbox"),
		"GRANT SELECT ON "+q(VersionTable))
	grant(r.Consumer, "consumer: the inbox table",
		"GRANT SELECT, INSERT, DELETE ON "+q("inbox"))
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
