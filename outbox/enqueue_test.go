package outbox_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

func TestEnqueueWritesAllRowsOrNone(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	ctx := context.Background()
	later := time.Now().Add(time.Hour).Truncate(time.Microsecond)

	ids, err := outbox.Enqueue(ctx, pool,
		outbox.Message{RoutingKey: "a", Payload: []byte("1"), OrderingKey: "order-7", AvailableAt: later, Headers: map[string]any{"h": "v"}},
		outbox.Message{Exchange: "ex", RoutingKey: "b", Payload: []byte("2"), ContentType: "text/plain"},
	)
	if err != nil {
		t.Fatal(err)
	}
	var (
		orderingKey *string
		availableAt time.Time
		headers     string
		contentType string
		exchange    string
	)
	if err := pool.QueryRow(ctx, `SELECT ordering_key, available_at, headers::text FROM outbox WHERE message_id = $1`, ids[0]).
		Scan(&orderingKey, &availableAt, &headers); err != nil {
		t.Fatal(err)
	}
	if orderingKey == nil || *orderingKey != "order-7" || !availableAt.Equal(later) || headers != `{"h": "v"}` {
		t.Errorf("row 0: ordering key %v, available_at %s, headers %s", orderingKey, availableAt, headers)
	}
	if err := pool.QueryRow(ctx, `SELECT content_type, exchange, ordering_key FROM outbox WHERE message_id = $1`, ids[1]).
		Scan(&contentType, &exchange, &orderingKey); err != nil {
		t.Fatal(err)
	}
	if contentType != "text/plain" || exchange != "ex" || orderingKey != nil {
		t.Errorf("row 1: content type %q, exchange %q, ordering key %v", contentType, exchange, orderingKey)
	}

	// One invalid message: nothing is written.
	_, err = outbox.Enqueue(ctx, pool, outbox.Message{RoutingKey: "ok", Payload: []byte("x")}, outbox.Message{Payload: []byte("no key")})
	if !errors.Is(err, outbox.ErrInvalidMessage) {
		t.Fatalf("got %v, want ErrInvalidMessage", err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("%d rows after a rejected batch, want 2", n)
	}

	// A reused message id is a database error, and the batch writes nothing.
	_, err = outbox.Enqueue(ctx, pool, outbox.Message{RoutingKey: "dup", Payload: []byte("x"), MessageID: ids[0]})
	if err == nil || errors.Is(err, outbox.ErrInvalidMessage) {
		t.Fatalf("reused message id: got %v, want a unique violation", err)
	}
}
