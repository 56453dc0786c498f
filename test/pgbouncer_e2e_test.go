package test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// The application and the relay reach PostgreSQL through PgBouncer in
// transaction mode; the relay's LISTEN goes over listen_database_url, a
// direct connection. With the poll interval at an hour, rows that arrive
// were found through the insert notification.
func TestBehindPgBouncerTransactionModeWithDirectListen(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	direct := testenv.NewSchema(t, true)
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	bouncer := testenv.StartPgBouncer(t, u.Query().Get("search_path"))
	app := testenv.Pool(t, bouncer)
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, false)
	ctx := context.Background()

	relay := startRelay(t, "RELAY_DATABASE_URL="+bouncer, "RELAY_LISTEN_DATABASE_URL="+direct,
		"RELAY_AMQP_URL="+env.AMQPURL, "RELAY_POLL_INTERVAL=1h", "RELAY_RESCAN_INTERVAL=1h",
		"RELAY_WORKERS=4", "RELAY_BATCH_SIZE=50")
	testenv.Eventually(t, 30*time.Second, "the relay to listen", func() (bool, error) {
		return relay.Metric("outboxrelay_relay_listener_connected") == "1", nil
	})

	// Twenty application transactions through PgBouncer, 50 rows each.
	want := map[string]bool{}
	for range 20 {
		tx, err := app.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		msgs := make([]outbox.Message, 50)
		for i := range msgs {
			msgs[i] = outbox.Message{RoutingKey: queue, Payload: []byte(`{"via":"pgbouncer"}`)}
		}
		ids, err := outbox.Enqueue(ctx, tx, msgs...)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			want[id] = true
		}
	}
	got := testenv.Consume(t, ch, queue, len(want), time.Minute)
	for _, d := range got {
		if !want[d.MessageId] {
			t.Fatalf("unexpected message %s", d.MessageId)
		}
		delete(want, d.MessageId)
	}
	if len(want) != 0 {
		t.Fatalf("%d messages missing", len(want))
	}
	testenv.WaitPublished(t, app, 30*time.Second)
	if errs := relay.Metric("outboxrelay_relay_database_errors_total"); errs != "0" {
		t.Fatalf("database_errors_total = %s behind PgBouncer; logs:\n%s", errs, relay.Logs())
	}
}
