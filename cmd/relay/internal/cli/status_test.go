package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// relay status counts a row waiting behind an earlier row of its key
// (dead or pending) as held, not due, and points to relay dead when rows
// are dead; under ordering_policy skip a dead row holds nothing.
func TestStatusTellsHeldFromDue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	if _, err := pool.Exec(ctx, `
INSERT INTO outbox (routing_key, payload, ordering_key, dead_at, last_error) VALUES ('q', 'x', 'k', now(), 'refused');
INSERT INTO outbox (routing_key, payload, ordering_key) VALUES ('q', 'x', 'k');  -- behind the dead row
INSERT INTO outbox (routing_key, payload, ordering_key) VALUES ('q', 'x', 'j');  -- due
INSERT INTO outbox (routing_key, payload, ordering_key) VALUES ('q', 'x', 'j');  -- behind a pending row
INSERT INTO outbox (routing_key, payload) VALUES ('q', 'x');                     -- due
INSERT INTO outbox (routing_key, payload, available_at) VALUES ('q', 'x', now() + interval '1 hour');`); err != nil {
		t.Fatal(err)
	}
	env := []string{"RELAY_DATABASE_URL=" + dsn}
	code, out, errOut := runMain(t, ctx, env, "status")
	if code != exitOK {
		t.Fatalf("relay status: exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"exchange   pending  due  held  failing  dead  oldest pending\n",
		"TOTAL      5        2    2     0        1     ",
		"\ndue: available now, nothing ahead of them; held: available, but behind an earlier row of their key (1 behind a pending row, 1 behind a dead one)\n" +
			"1 dead row(s): `relay dead` lists them with their last error; `relay requeue ID...` or `relay discard ID...` then\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("relay status: no %q in:\n%s", want, out)
		}
	}
	code, out, errOut = runMain(t, ctx, append(env, "RELAY_ORDERING_POLICY=skip"), "status", "--json")
	var st struct{ Pending, Due, Held, Dead int }
	if err := json.Unmarshal([]byte(out), &st); code != exitOK || err != nil {
		t.Fatalf("relay status --json: exit %d, %v: %s%s", code, err, out, errOut)
	}
	if want := (struct{ Pending, Due, Held, Dead int }{5, 3, 1, 1}); st != want {
		t.Errorf("relay status --json under skip: %+v, want %+v", st, want)
	}
}
