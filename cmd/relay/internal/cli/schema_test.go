package cli

import (
	"context"
	"testing"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/migrations"
)

// Every database command says what `relay run` says of a schema without
// the relay's tables, and names RELAY_SCHEMA when they are in another
// schema (where `relay migrate` would make a second, empty outbox).
func TestCommandsReportAnUnmigratedSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDatabase(t)
	cmds := [][]string{{"status"}, {"dead"}, {"requeue", "1"}, {"discard", "1"}, {"retry", "1"}}
	for _, args := range cmds {
		code, _, errOut := runMain(t, ctx, []string{"RELAY_DATABASE_URL=" + db}, args...)
		want := "relay " + args[0] + ": migrations: schema \"public\" has no relay tables: run `relay migrate`\n"
		if code != exitFailed || errOut != want {
			t.Errorf("relay %v: exit %d, stderr %q; want %d, %q", args, code, errOut, exitFailed, want)
		}
	}
	if _, err := migrations.UpSchema(ctx, db, "relay"); err != nil {
		t.Fatal(err)
	}
	for _, args := range cmds {
		code, _, errOut := runMain(t, ctx, []string{"RELAY_DATABASE_URL=" + db}, args...)
		want := "relay " + args[0] + ": migrations: schema \"public\" has no relay tables, but schema \"relay\" has them: " +
			"set RELAY_SCHEMA=relay (configuration key schema) to use them; `relay migrate` would create a second, empty outbox in \"public\"\n"
		if code != exitFailed || errOut != want {
			t.Errorf("relay %v, tables in schema relay: exit %d, stderr %q; want %d, %q", args, code, errOut, exitFailed, want)
		}
	}
	// And with the schema named, the command runs.
	if code, _, errOut := runMain(t, ctx, []string{"RELAY_DATABASE_URL=" + db, "RELAY_SCHEMA=relay"}, "status"); code != exitOK {
		t.Errorf("relay status with RELAY_SCHEMA=relay: exit %d: %s", code, errOut)
	}
}
