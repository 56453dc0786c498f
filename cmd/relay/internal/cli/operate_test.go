package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// insertRows writes rows and returns their ids; each values entry is the
// tail of a VALUES tuple after (routing_key, payload).
func insertRows(t *testing.T, dsn string, values ...string) []int64 {
	t.Helper()
	pool := testenv.Pool(t, dsn)
	var ids []int64
	for _, v := range values {
		var id int64
		if err := pool.QueryRow(context.Background(), `INSERT INTO outbox (routing_key, payload, ordering_key, available_at, attempts, dead_at)
			VALUES ('k', 'x', `+v+`) RETURNING id`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func TestDiscardDeletesDeadRowsOnly(t *testing.T) {
	t.Parallel()
	dsn := testenv.NewSchema(t, true)
	ids := insertRows(t, dsn, `NULL, now(), 10, now()`, `NULL, now(), 0, NULL`)
	dead, pending := ids[0], ids[1]
	ctx := context.Background()
	code, out, errOut := runMain(t, ctx, []string{"RELAY_DATABASE_URL=" + dsn}, "discard", fmt.Sprint(dead), fmt.Sprint(pending))
	if code != exitFailed || !strings.Contains(out, "discarded 1 dead row(s)") || !strings.Contains(out, fmt.Sprintf("\n%d ", dead)) ||
		!strings.Contains(errOut, fmt.Sprintf("not dead or not found, left as they were: %d", pending)) {
		t.Fatalf("exit %d, want %d naming what went and what stayed; stdout:\n%s\nstderr:\n%s", code, exitFailed, out, errOut)
	}
	var left []int64
	if err := testenv.Pool(t, dsn).QueryRow(ctx, `SELECT array_agg(id ORDER BY id) FROM outbox`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0] != pending {
		t.Fatalf("rows left %v, want only the pending row %d", left, pending)
	}
	if code, _, errOut := runMain(t, ctx, []string{"RELAY_DATABASE_URL=" + dsn}, "discard"); code != exitUsage || !strings.Contains(errOut, "give the ids") {
		t.Fatalf("discard without ids: exit %d: %s", code, errOut)
	}
}

func TestRetryMakesAWaitingRowDueNow(t *testing.T) {
	t.Parallel()
	dsn := testenv.NewSchema(t, true)
	ids := insertRows(t, dsn, `NULL, now() + interval '1 hour', 3, NULL`, `NULL, now(), 10, now()`)
	waiting, dead := ids[0], ids[1]
	ctx := context.Background()
	code, out, errOut := runMain(t, ctx, []string{"RELAY_DATABASE_URL=" + dsn}, "retry", fmt.Sprint(waiting), fmt.Sprint(dead))
	if code != exitFailed || !strings.Contains(out, fmt.Sprintf("made 1 pending row(s) due now: %d", waiting)) ||
		!strings.Contains(errOut, fmt.Sprintf("left as they were: %d", dead)) {
		t.Fatalf("exit %d; stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	var due bool
	var attempts int
	if err := testenv.Pool(t, dsn).QueryRow(ctx, `SELECT available_at <= now(), attempts FROM outbox WHERE id = $1`, waiting).Scan(&due, &attempts); err != nil {
		t.Fatal(err)
	}
	if !due || attempts != 3 {
		t.Fatalf("due %v, attempts %d: want due now with its 3 attempts kept", due, attempts)
	}
}

func TestStatusListsBlockedKeys(t *testing.T) {
	t.Parallel()
	dsn := testenv.NewSchema(t, true)
	ids := insertRows(t, dsn, `'key-a', now(), 10, now()`, `'key-a', now(), 0, NULL`, `'key-a', now(), 0, NULL`, `'key-b', now(), 0, NULL`)
	env := []string{"RELAY_DATABASE_URL=" + dsn}
	ctx := context.Background()
	code, out, errOut := runMain(t, ctx, env, "status")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("key-a: dead row %d, 2 pending row(s) after it", ids[0])) || strings.Contains(out, "key-b:") {
		t.Fatalf("exit %d, want key-a listed alone; stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	code, out, _ = runMain(t, ctx, env, "status", "--json")
	var st struct {
		Blocked []struct {
			OrderingKey string `json:"ordering_key"`
			DeadID      int64  `json:"dead_id"`
			Waiting     int64  `json:"waiting"`
		} `json:"blocked"`
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || len(st.Blocked) != 1 ||
		st.Blocked[0].OrderingKey != "key-a" || st.Blocked[0].DeadID != ids[0] || st.Blocked[0].Waiting != 2 {
		t.Fatalf("exit %d, err %v, got %+v; stdout:\n%s", code, err, st, out)
	}
}

// Every --json output is one JSON document, also when there is nothing
// to show: arrays are [], never absent or null.
func TestJSONOutputIsAlwaysValid(t *testing.T) {
	t.Parallel()
	env := []string{"RELAY_DATABASE_URL=" + testenv.NewSchema(t, true)}
	ctx := context.Background()
	code, out, _ := runMain(t, ctx, env, "dead", "--json")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("relay dead --json on no dead rows: exit %d, printed %q, want []", code, out)
	}
	code, out, _ = runMain(t, ctx, env, "status", "--json")
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil {
		t.Fatalf("relay status --json: exit %d, %v:\n%s", code, err, out)
	}
	for _, k := range []string{"by_exchange", "blocked"} {
		if list, ok := st[k].([]any); !ok || len(list) != 0 {
			t.Errorf("status %s = %#v, want []", k, st[k])
		}
	}
	// Two dead rows are one array of two, not two documents.
	insertRows(t, strings.TrimPrefix(env[0], "RELAY_DATABASE_URL="), `NULL, now(), 10, now()`, `NULL, now(), 10, now()`)
	code, out, _ = runMain(t, ctx, env, "dead", "--json")
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); code != 0 || err != nil || len(rows) != 2 {
		t.Fatalf("relay dead --json: exit %d, %v, %d rows:\n%s", code, err, len(rows), out)
	}
}

func TestCommandHelpListsItsOwnFlags(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	code, out, errOut := runMain(t, ctx, nil, "status", "--help")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"usage: relay status", "--json", "--database-url", "--ordering-policy"} {
		if !strings.Contains(out, want) {
			t.Errorf("status --help lacks %q:\n%s", want, out)
		}
	}
	for _, not := range []string{"--batch-size", "--amqp-url", "--workers", "--limit"} {
		if strings.Contains(out, not) {
			t.Errorf("status --help lists %s, a flag of another command:\n%s", not, out)
		}
	}
	if code, out, _ := runMain(t, ctx, nil, "run", "--help"); code != 0 || !strings.Contains(out, "--batch-size") {
		t.Errorf("run --help: exit %d, lacks --batch-size:\n%s", code, out)
	}
}

func TestUnknownVariableWarns(t *testing.T) {
	t.Parallel()
	env := []string{"RELAY_DATABASE_URL=" + testenv.NewSchema(t, true), "RELAY_BATCHSIZE=lots", "RELAY_TEST_ANYTHING=1"}
	code, _, errOut := runMain(t, context.Background(), env, "dead")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want := "relay: warning: RELAY_BATCHSIZE is not a configuration variable and is ignored (did you mean RELAY_BATCH_SIZE?)"
	if !strings.Contains(errOut, want) || strings.Contains(errOut, "RELAY_TEST_ANYTHING") {
		t.Fatalf("stderr:\n%s\nwant the line %q and nothing about RELAY_TEST_*", errOut, want)
	}
}
