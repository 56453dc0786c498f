package testenv

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// dumpSQL describes every object of schema $1 as lines of text: columns,
// constraints, indexes, triggers, functions, storage options, sequences
// and the rows of the relay's version table (versions only: ids and times
// differ between two runs).
const dumpSQL = `
SELECT format('column %s.%s #%s %s default=%s null=%s identity=%s/%s', table_name, column_name,
              ordinal_position, data_type, column_default, is_nullable, is_identity, identity_generation)
FROM information_schema.columns WHERE table_schema = $1
UNION ALL
SELECT format('constraint %s %s %s %s', c.conrelid::regclass, c.conname, c.contype, pg_get_constraintdef(c.oid))
FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = $1
UNION ALL
SELECT format('index %s %s', indexname, indexdef) FROM pg_indexes WHERE schemaname = $1
UNION ALL
SELECT format('trigger %s %s', t.tgname, pg_get_triggerdef(t.oid))
FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid JOIN pg_namespace n ON n.oid = r.relnamespace
WHERE n.nspname = $1 AND NOT t.tgisinternal
UNION ALL
SELECT format('function %s %s', p.proname, pg_get_functiondef(p.oid))
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1
UNION ALL
SELECT format('relation %s kind=%s options=%s', r.relname, r.relkind, r.reloptions)
FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace WHERE n.nspname = $1
UNION ALL
SELECT format('sequence %s %s start=%s inc=%s max=%s', sequencename, data_type, start_value, increment_by, max_value)
FROM pg_sequences WHERE schemaname = $1`

const dumpVersionsSQL = `SELECT format('version %s applied=%s', version_id, is_applied) FROM `

// SchemaDump returns a sorted description of everything in schema, its
// name replaced by "<schema>", so that two schemas built the same way
// compare equal. versionTable, when not empty, adds that table's versions.
func SchemaDump(t testing.TB, db interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}, schema, versionTable string) []string {
	t.Helper()
	ctx := context.Background()
	collect := func(sql string, args ...any) []string {
		rows, err := db.Query(ctx, sql, args...)
		if err != nil {
			t.Fatalf("dump schema %s: %v", schema, err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatalf("dump schema %s: %v", schema, err)
		}
		return lines
	}
	lines := collect(dumpSQL, schema)
	if versionTable != "" {
		lines = append(lines, collect(dumpVersionsSQL+pgx.Identifier{schema, versionTable}.Sanitize())...)
	}
	for i, l := range lines {
		l = strings.ReplaceAll(l, pgx.Identifier{schema}.Sanitize(), "<schema>")
		lines[i] = strings.ReplaceAll(l, schema, "<schema>")
	}
	slices.Sort(lines)
	return lines
}
