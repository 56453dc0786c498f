package relay_test

import (
	"context"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay/relay"
)

// A row sent to an exchange that does not exist is listed as failing,
// with its reason and next attempt, from its first failed attempt on,
// and counted in the status; nothing waits for it to die.
func TestFailingRowListedAfterFirstAttempt(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()
	var id int64
	if err := b.pool.QueryRow(ctx, `INSERT INTO outbox (exchange, routing_key, payload) VALUES ('no-such-exchange', 'k', 'x') RETURNING id`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	b.waitFailed(t)
	rows, err := relay.ListFailing(ctx, b.pool, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].ID != id || rows[0].Attempts != 1 || !strings.HasPrefix(rows[0].LastError, "no_exchange: ") ||
		rows[0].NextAttempt.IsZero() {
		t.Fatalf("failing rows: %+v, want row %d after one no_exchange attempt", rows, id)
	}
	st, err := relay.ReadStatus(ctx, b.pool)
	if err != nil {
		t.Fatal(err)
	}
	if st.Failing != 1 || st.Dead != 0 {
		t.Fatalf("status: %d failing, %d dead; want 1 and 0", st.Failing, st.Dead)
	}
}
