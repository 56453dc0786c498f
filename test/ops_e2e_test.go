package test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// A row whose publish can never succeed ends dead
// with a readable last_error after the configured attempts; `relay dead`
// and `relay status` show it, and `relay requeue` brings it back.
func TestDeadRowIsListedAndRequeued(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	_, ch := testenv.AMQP(t, env.AMQPURL)
	ctx := context.Background()

	key := testenv.Name("unbound")
	ids, err := outbox.Enqueue(ctx, pool, outbox.Message{Exchange: "amq.direct", RoutingKey: key, Payload: []byte("parked"), OrderingKey: "customer-7"})
	if err != nil {
		t.Fatal(err)
	}
	var rowID int64
	if err := pool.QueryRow(ctx, `SELECT id FROM outbox WHERE message_id = $1`, ids[0]).Scan(&rowID); err != nil {
		t.Fatal(err)
	}
	db := "RELAY_DATABASE_URL=" + dsn
	startRelay(t, db, "RELAY_AMQP_URL="+env.AMQPURL, "RELAY_MAX_ATTEMPTS=2",
		"RELAY_RETRY_BASE=1ms", "RELAY_RETRY_MAX=1ms", "RELAY_POLL_INTERVAL=10ms")
	testenv.Eventually(t, 30*time.Second, "the row to be parked dead", func() (bool, error) {
		var dead bool
		err := pool.QueryRow(ctx, `SELECT dead_at IS NOT NULL FROM outbox WHERE id = $1`, rowID).Scan(&dead)
		return dead, err
	})

	out, code := relayCmd(t, []string{db}, "dead")
	if code != 0 || !strings.Contains(out, strconv.FormatInt(rowID, 10)) || !strings.Contains(out, "unroutable: returned by broker: 312 NO_ROUTE") {
		t.Fatalf("relay dead: exit %d, output:\n%s", code, out)
	}
	out, code = relayCmd(t, []string{db}, "status", "--json")
	if code != 0 || !strings.Contains(out, `"dead": 1`) || !strings.Contains(out, `"exchange": "amq.direct"`) ||
		!strings.Contains(out, `"blocked_keys": 1`) {
		t.Fatalf("relay status --json: exit %d, output:\n%s", code, out)
	}

	// Nothing to requeue under another id: exit 1, and the dead row stays.
	out, code = relayCmd(t, []string{db}, "requeue", strconv.FormatInt(rowID+1000, 10))
	if code != 1 || !strings.Contains(out, "not dead or not found") {
		t.Fatalf("requeue of a missing id: exit %d, output:\n%s", code, out)
	}
	out, code = relayCmd(t, []string{db}, "requeue")
	if code != 2 {
		t.Fatalf("requeue without ids or --all: exit %d, want 2; output:\n%s", code, out)
	}

	// Give the message somewhere to go, then requeue it.
	queue := testenv.Queue(t, ch, false)
	if err := ch.QueueBind(queue, key, "amq.direct", false, nil); err != nil {
		t.Fatal(err)
	}
	out, code = relayCmd(t, []string{db}, "requeue", strconv.FormatInt(rowID, 10))
	if code != 0 || !strings.Contains(out, "requeued 1 dead row(s): "+strconv.FormatInt(rowID, 10)) {
		t.Fatalf("relay requeue: exit %d, output:\n%s", code, out)
	}
	got := testenv.Consume(t, ch, queue, 1, 30*time.Second)
	if got[0].MessageId != ids[0] {
		t.Fatalf("got message %s, want %s", got[0].MessageId, ids[0])
	}
	testenv.Eventually(t, 30*time.Second, "the requeued row to be marked published", func() (bool, error) {
		var published bool
		err := pool.QueryRow(ctx, `SELECT published_at IS NOT NULL FROM outbox WHERE id = $1`, rowID).Scan(&published)
		return published, err
	})
	out, code = relayCmd(t, []string{db}, "status")
	if code != 0 || !strings.Contains(out, "TOTAL") || strings.Contains(out, "amq.direct") ||
		!strings.Contains(out, "ordering keys with a dead row: 0 (ordering_policy block") {
		t.Fatalf("relay status after requeue: exit %d, output:\n%s", code, out)
	}
}
