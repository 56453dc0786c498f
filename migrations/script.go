package migrations

import (
	"fmt"
	"io/fs"
	"strings"
)

// Script returns the SQL that Up runs on an empty schema, as one script
// for other migration tools (Flyway, Liquibase, Atlas) or psql: each
// migration's Up section in order, each followed by the row goose records
// for it in VersionTable, so that `relay run` accepts the schema. With a
// schema name it starts by creating that schema and making it the
// session's search_path; without, it works in the current schema.
//
// The script is for a schema without the relay's tables. Run it in one
// transaction (psql --single-transaction), as Up runs each migration.
func Script(schema string) (string, error) {
	versions, err := embedded()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "-- Outbox Relay schema at version %d, as `relay migrate` creates it.\n", versions[len(versions)-1])
	b.WriteString("-- Apply to a schema without the relay's tables, in one transaction:\n")
	b.WriteString("--   psql --single-transaction -v ON_ERROR_STOP=1 -f relay.sql\n\n")
	if schema != "" {
		fmt.Fprintf(&b, "CREATE SCHEMA IF NOT EXISTS %s;\nSET search_path TO %s;\n\n", SearchPath(schema), SearchPath(schema))
	}
	b.WriteString("-- The relay's version table (goose's layout): `relay run` reads it.\n")
	b.WriteString(versionTableDDL)
	names, err := fs.Glob(files, "*.sql")
	if err != nil {
		return "", fmt.Errorf("migrations: list embedded: %w", err)
	}
	for i, name := range names { // fs.Glob sorts, and names are zero-padded
		up, err := upSection(name)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "\n-- ---- %s ----\n%s\n", name, strings.TrimSpace(up))
		fmt.Fprintf(&b, "INSERT INTO %s (version_id, is_applied) VALUES (%d, true);\n", VersionTable, versions[i])
	}
	return b.String(), nil
}

// upSection returns the Up part of a goose SQL file: what follows
// "-- +goose Up" and precedes "-- +goose Down". goose's other annotations
// (StatementBegin/End) are comments to psql and stay. A file needing more
// of goose than this (NO TRANSACTION, ENVSUB) is refused, so that the
// script can never differ from what goose runs.
func upSection(name string) (string, error) {
	data, err := fs.ReadFile(files, name)
	if err != nil {
		return "", fmt.Errorf("migrations: read %s: %w", name, err)
	}
	text := string(data)
	_, rest, ok := strings.Cut(text, "-- +goose Up\n")
	if !ok {
		return "", fmt.Errorf("migrations: %s has no -- +goose Up", name)
	}
	up, _, _ := strings.Cut(rest, "-- +goose Down")
	for _, line := range strings.Split(up, "\n") {
		if a, ok := strings.CutPrefix(strings.TrimSpace(line), "-- +goose "); ok &&
			a != "StatementBegin" && a != "StatementEnd" {
			return "", fmt.Errorf("migrations: %s: annotation %q is not supported by Script", name, a)
		}
	}
	return up, nil
}
