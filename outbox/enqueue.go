package outbox

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Execer runs a statement. pgx.Tx, *pgx.Conn and *pgxpool.Pool satisfy it;
// pass your transaction so the messages commit or roll back with your
// business rows.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// insertMany inserts any number of rows in one statement by zipping
// parallel arrays with unnest. Columns left NULL fall back to the defaults
// the table would have given.
const insertMany = `
INSERT INTO outbox (message_id, exchange, routing_key, payload, content_type, headers, ordering_key, available_at)
SELECT m.message_id, m.exchange, m.routing_key, m.payload, m.content_type, m.headers, m.ordering_key,
       coalesce(m.available_at, now())
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::jsonb[], $7::text[], $8::timestamptz[])
    AS m(message_id, exchange, routing_key, payload, content_type, headers, ordering_key, available_at)`

// Enqueue writes msgs to the outbox table through tx, in one round trip,
// and returns their message ids in the same order. It validates every
// message first: if one is invalid, nothing is written and the error wraps
// ErrInvalidMessage.
//
// When ctx carries a span (OpenTelemetry), its W3C trace context is added
// to each message's headers as traceparent and tracestate, unless the
// message sets a traceparent itself: the relay's publish span then
// continues the caller's trace.
func Enqueue(ctx context.Context, tx Execer, msgs ...Message) ([]string, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	var (
		ids          = make([]string, len(msgs))
		msgIDs       = make([]string, len(msgs))
		exchanges    = make([]string, len(msgs))
		routingKeys  = make([]string, len(msgs))
		payloads     = make([][]byte, len(msgs))
		contentTypes = make([]string, len(msgs))
		headers      = make([]string, len(msgs))
		orderingKeys = make([]*string, len(msgs))
		availableAts = make([]*time.Time, len(msgs))
	)
	rows := make([]row, len(msgs))
	tc := traceHeaders(ctx)
	for i := range msgs {
		m := msgs[i] // a copy: the caller's message is not changed
		m.Headers = withTrace(m.Headers, tc)
		r, err := m.row()
		if err != nil {
			if len(msgs) > 1 {
				return nil, fmt.Errorf("message %d: %w", i, err)
			}
			return nil, err
		}
		rows[i] = r
		ids[i] = r.messageID
	}
	// Keyed rows take a per-key lock as they are inserted (see the
	// migration). Inserting them sorted by key makes every Enqueue take its
	// locks in the same order, so two concurrent ones cannot deadlock; the
	// sort is stable, so each key keeps the caller's order.
	sort.SliceStable(rows, func(i, j int) bool { return keyOf(rows[i]) < keyOf(rows[j]) })
	for i, r := range rows {
		msgIDs[i], exchanges[i], routingKeys[i], payloads[i] = r.messageID, r.exchange, r.routingKey, r.payload
		contentTypes[i], headers[i], orderingKeys[i], availableAts[i] = r.contentType, string(r.headers), r.orderingKey, r.availableAt
	}
	tag, err := tx.Exec(ctx, insertMany, msgIDs, exchanges, routingKeys, payloads, contentTypes, headers, orderingKeys, availableAts)
	if err != nil {
		return nil, fmt.Errorf("outbox: enqueue: %w", err)
	}
	if tag.RowsAffected() != int64(len(msgs)) {
		return nil, fmt.Errorf("outbox: enqueue: wrote %d rows, expected %d", tag.RowsAffected(), len(msgs))
	}
	return ids, nil
}

func keyOf(r row) string {
	if r.orderingKey == nil {
		return ""
	}
	return *r.orderingKey
}
