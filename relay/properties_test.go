package relay_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// Each optional AMQP property set on a row, from plain SQL and from
// outbox.Enqueue, reaches a consumer as the real property.
func TestAMQPPropertiesReachTheConsumer(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()
	// A classic queue: it keeps a message's expiration and priority as
	// sent (the test reads them before the 10-minute TTL ends).
	queue := testenv.Queue(t, b.ch, false)

	var sqlID string
	if err := b.pool.QueryRow(ctx, `
		INSERT INTO outbox (routing_key, payload, type, correlation_id, reply_to, expiration, priority, app_id)
		VALUES ($1, convert_to('{"n":1}', 'UTF8'), 'order.created', 'corr-42', 'replies.q', '600000', 7, 'shop')
		RETURNING message_id::text`, queue).Scan(&sqlID); err != nil {
		t.Fatal(err)
	}
	goIDs, err := outbox.Enqueue(ctx, b.pool, outbox.Message{
		RoutingKey: queue, Payload: []byte(`{"n":2}`),
		Type: "order.paid", CorrelationID: "corr-43", ReplyTo: "replies.go", Expiration: "500000", Priority: 255, AppID: "shop-go",
	})
	if err != nil {
		t.Fatal(err)
	}
	b.waitPublished(t, sqlID, goIDs[0])

	want := map[string]amqp.Delivery{
		sqlID:    {Type: "order.created", CorrelationId: "corr-42", ReplyTo: "replies.q", Expiration: "600000", Priority: 7, AppId: "shop"},
		goIDs[0]: {Type: "order.paid", CorrelationId: "corr-43", ReplyTo: "replies.go", Expiration: "500000", Priority: 255, AppId: "shop-go"},
	}
	for _, d := range testenv.Consume(t, b.ch, queue, 2, 30*time.Second) {
		w, ok := want[d.MessageId]
		if !ok {
			t.Fatalf("unexpected message %q", d.MessageId)
		}
		got := [...]any{d.Type, d.CorrelationId, d.ReplyTo, d.Expiration, d.Priority, d.AppId}
		exp := [...]any{w.Type, w.CorrelationId, w.ReplyTo, w.Expiration, w.Priority, w.AppId}
		if got != exp {
			t.Errorf("message %s: properties (type, correlation_id, reply_to, expiration, priority, app_id) = %q, want %q", d.MessageId, got, exp)
		}
	}
}

// A bad property is refused at insert, from plain SQL (by a named
// constraint) and from outbox.Enqueue (ErrInvalidMessage naming the field),
// and nothing is written.
func TestBadAMQPPropertiesAreRefused(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	ctx := context.Background()
	long := strings.Repeat("x", 256)
	cases := []struct {
		column, value, constraint string
		msg                       outbox.Message
		field                     string
	}{
		{"type", long, "outbox_type_shortstr", outbox.Message{Type: long}, "type"},
		{"correlation_id", "a\nb", "outbox_correlation_id_shortstr", outbox.Message{CorrelationID: "a\nb"}, "correlation_id"},
		{"reply_to", long, "outbox_reply_to_shortstr", outbox.Message{ReplyTo: long}, "reply_to"},
		{"app_id", "\x1b[31m", "outbox_app_id_shortstr", outbox.Message{AppID: "\x1b[31m"}, "app_id"},
		{"expiration", "1s", "outbox_expiration_ms", outbox.Message{Expiration: "1s"}, "expiration"},
		{"expiration", "-5", "outbox_expiration_ms", outbox.Message{Expiration: "-5"}, "expiration"},
		{"expiration", "4294967296", "outbox_expiration_ms", outbox.Message{Expiration: "4294967296"}, "expiration"},
		{"priority", "256", "outbox_priority_range", outbox.Message{}, ""},
		{"priority", "-1", "outbox_priority_range", outbox.Message{}, ""},
	}
	for _, tc := range cases {
		_, err := pool.Exec(ctx, `INSERT INTO outbox (routing_key, payload, `+tc.column+`) VALUES ('k', 'x', $1)`, tc.value)
		var pg *pgconn.PgError
		if !errors.As(err, &pg) || pg.ConstraintName != tc.constraint {
			t.Errorf("SQL %s = %q: got %v, want a violation of %s", tc.column, tc.value, err, tc.constraint)
		}
		if tc.field == "" {
			continue // uint8 cannot hold it
		}
		m := tc.msg
		m.RoutingKey, m.Payload = "k", []byte("x")
		_, err = outbox.Enqueue(ctx, pool, m)
		var le *outbox.LimitError
		if !errors.Is(err, outbox.ErrInvalidMessage) || !errors.As(err, &le) || le.Field != tc.field {
			t.Errorf("Enqueue %s = %q: got %v, want ErrInvalidMessage naming %s", tc.column, tc.value, err, tc.field)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows written (err %v), want none", n, err)
	}
	// The limits' edges are accepted.
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (routing_key, payload, type, expiration, priority)
		VALUES ('k', 'x', $1, '4294967295', 255), ('k', 'x', NULL, '0', 0)`, long[:255]); err != nil {
		t.Fatalf("edges refused: %v", err)
	}
}
