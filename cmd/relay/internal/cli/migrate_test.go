package cli

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/migrations"
)

// psql runs script with psql in one transaction against dsn, with extra
// environment (PGOPTIONS).
func psql(t *testing.T, dsn, script string, env ...string) {
	t.Helper()
	bin := testenv.Tool(t, "psql", "Debian package postgresql-client")
	cmd := exec.Command(bin, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-", dsn)
	cmd.Stdin = strings.NewReader(script)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
}

// The SQL `relay migrate --print-sql` prints,
// applied with psql, gives the same schema as `relay migrate`, with a
// schema named and without one (psql's search_path then decides), and
// `relay run` accepts it.
func TestPrintedSQLBuildsTheSameSchemaAsMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base := testenv.Services(t).DatabaseURL
	admin := testenv.Pool(t, base)

	migrated := testenv.NewSchemaName(t)
	if code, out, errOut := runMain(t, ctx, []string{"RELAY_DATABASE_URL=" + base, "RELAY_SCHEMA=" + migrated}, "migrate"); code != 0 {
		t.Fatalf("relay migrate: exit %d\n%s%s", code, out, errOut)
	}
	want := testenv.SchemaDump(t, admin, migrated, migrations.VersionTable)

	named := testenv.NewSchemaName(t)
	code, script, errOut := runMain(t, ctx, []string{"RELAY_SCHEMA=" + named}, "migrate", "--print-sql")
	if code != 0 || !strings.Contains(script, "CREATE SCHEMA IF NOT EXISTS \""+named+"\"") {
		t.Fatalf("relay migrate --print-sql --schema: exit %d\n%s%s", code, script, errOut)
	}
	psql(t, base, script)

	current := testenv.CurrentSchema(t, testenv.NewSchema(t, false))
	code, plain, errOut := runMain(t, ctx, nil, "migrate", "--print-sql")
	if code != 0 || strings.Contains(plain, "SET search_path TO") { // the session statement Script writes for a named schema
		t.Fatalf("relay migrate --print-sql: exit %d (want 0 and no SET search_path)\n%s%s", code, plain, errOut)
	}
	psql(t, base, plain, "PGOPTIONS=-c search_path="+current)

	for _, s := range []string{named, current} {
		if got := testenv.SchemaDump(t, admin, s, migrations.VersionTable); !slices.Equal(got, want) {
			t.Errorf("schema %s built by psql differs from relay migrate's:\n- %s\n+ %s", s,
				strings.Join(want, "\n- "), strings.Join(got, "\n+ "))
		}
		if err := migrations.Check(ctx, testenv.Pool(t, testenv.WithSearchPath(base, s))); err != nil {
			t.Errorf("relay run's check of schema %s: %v", s, err)
		}
	}
}
