package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// Requeue, retry and discard each leave an audit entry naming the role
// that ran them, what they were given and how many rows they changed, and
// relay audit lists them newest first.
func TestActionsAreAudited(t *testing.T) {
	t.Parallel()
	dsn := testenv.NewSchema(t, true)
	ids := insertRows(t, dsn, `NULL, now(), 10, now()`, `NULL, now(), 10, now()`, `NULL, now() + interval '1 hour', 3, NULL`)
	ctx := context.Background()
	env := []string{"RELAY_DATABASE_URL=" + dsn}
	for _, args := range [][]string{
		{"requeue", fmt.Sprint(ids[0])},
		{"discard", fmt.Sprint(ids[1])},
		{"retry", fmt.Sprint(ids[2]), "999999"}, // one id unknown: exit 1, still audited
	} {
		runMain(t, ctx, env, args...)
	}
	code, out, errOut := runMain(t, ctx, env, "audit", "--json")
	if code != exitOK {
		t.Fatalf("audit: exit %d: %s", code, errOut)
	}
	var list []struct {
		Action, Actor string
		Rows          int64
		Filter        map[string][]int64
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("audit --json: %v\n%s", err, out)
	}
	var user string
	if err := testenv.Pool(t, dsn).QueryRow(ctx, `SELECT session_user`).Scan(&user); err != nil {
		t.Fatal(err)
	}
	want := []struct {
		action string
		ids    []int64
	}{{"retry", []int64{ids[2], 999999}}, {"discard", []int64{ids[1]}}, {"requeue", []int64{ids[0]}}}
	if len(list) != len(want) {
		t.Fatalf("audit lists %d entries, want %d:\n%s", len(list), len(want), out)
	}
	for i, w := range want {
		a := list[i]
		if a.Action != w.action || a.Actor != user || a.Rows != 1 || fmt.Sprint(a.Filter["ids"]) != fmt.Sprint(w.ids) {
			t.Errorf("entry %d: %+v, want %s of %v by %s, 1 row", i, a, w.action, w.ids, user)
		}
	}
	if code, out, _ := runMain(t, ctx, env, "audit"); code != exitOK || !strings.Contains(out, "requeue") {
		t.Fatalf("audit text: exit %d\n%s", code, out)
	}
}

// relay replay refuses a command that names no filter or no id mode.
func TestReplayUsage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := []string{"RELAY_DATABASE_URL=postgres://127.0.0.1:1/none"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"replay", "--message-ids", "same"}, "give a filter"},
		{[]string{"replay", "--from-id", "5"}, "--message-ids must be same or new"},
		{[]string{"replay", "--message-ids", "new", "--since", "yesterday"}, "not an RFC 3339 time"},
		{[]string{"replay", "--message-ids", "new", "--from-id", "9", "--to-id", "3"}, "from <= to"},
	} {
		code, _, errOut := runMain(t, ctx, env, tc.args...)
		if code != exitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want usage error %q", tc.args, code, errOut, tc.want)
		}
	}
}
