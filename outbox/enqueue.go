package outbox

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
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
// the table would have given. %s is the table (Table.name).
const insertMany = `
INSERT INTO %s (message_id, exchange, routing_key, payload, content_type, headers, ordering_key, available_at,
                type, correlation_id, reply_to, expiration, priority, app_id)
SELECT m.message_id, m.exchange, m.routing_key, m.payload, m.content_type, m.headers, m.ordering_key,
       coalesce(m.available_at, now()),
       nullif(m.type, ''), nullif(m.correlation_id, ''), nullif(m.reply_to, ''), nullif(m.expiration, ''),
       nullif(m.priority, 0), nullif(m.app_id, '')
FROM ROWS FROM (pg_catalog.unnest($1::uuid[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::bytea[]), pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::jsonb[]), pg_catalog.unnest($7::text[]), pg_catalog.unnest($8::timestamptz[]), pg_catalog.unnest($9::text[]), pg_catalog.unnest($10::text[]), pg_catalog.unnest($11::text[]), pg_catalog.unnest($12::text[]), pg_catalog.unnest($13::smallint[]), pg_catalog.unnest($14::text[]))
    AS m(message_id, exchange, routing_key, payload, content_type, headers, ordering_key, available_at,
         type, correlation_id, reply_to, expiration, priority, app_id)`

// insertPlain is insertMany without the AMQP property columns, used when no
// message sets one: an application can then upgrade this package before
// `relay migrate` adds those columns (migration 5).
const insertPlain = `
INSERT INTO %s (message_id, exchange, routing_key, payload, content_type, headers, ordering_key, available_at)
SELECT m.message_id, m.exchange, m.routing_key, m.payload, m.content_type, m.headers, m.ordering_key,
       coalesce(m.available_at, now())
FROM ROWS FROM (pg_catalog.unnest($1::uuid[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::bytea[]), pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::jsonb[]), pg_catalog.unnest($7::text[]), pg_catalog.unnest($8::timestamptz[]))
    AS m(message_id, exchange, routing_key, payload, content_type, headers, ordering_key, available_at)`

// Table is the outbox table of one schema. The zero Table is the outbox
// found through the connection's search_path, as the package-level
// Enqueue uses; set Schema when the relay's tables live in a schema of
// their own (the relay's `schema` setting) and the application's
// connection works in another:
//
//	outbox.Table{Schema: "relay"}.Enqueue(ctx, tx, msg)
type Table struct {
	// Schema holds the outbox table, taken as written (case matters);
	// empty: the first schema of the search_path that has one.
	Schema string
}

func (t Table) name() string {
	if t.Schema == "" {
		return "outbox"
	}
	return pgx.Identifier{t.Schema, "outbox"}.Sanitize()
}

// Enqueue writes msgs to the outbox table of the connection's search_path
// through tx: Table{}.Enqueue.
func Enqueue(ctx context.Context, tx Execer, msgs ...Message) ([]string, error) {
	return Table{}.Enqueue(ctx, tx, msgs...)
}

// Enqueue writes msgs to the table through tx, in one round trip, and
// returns their message ids in the same order. It validates every message
// first: if one is invalid, nothing is written and the error wraps
// ErrInvalidMessage.
//
// When ctx carries a span (OpenTelemetry), its W3C trace context is added
// to each message's headers as traceparent and tracestate, unless the
// message sets a traceparent itself: the relay's publish span then
// continues the caller's trace.
func (t Table) Enqueue(ctx context.Context, tx Execer, msgs ...Message) ([]string, error) {
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
		props        = newPropColumns(len(msgs))
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
	withProps := false
	for i, r := range rows {
		msgIDs[i], exchanges[i], routingKeys[i], payloads[i] = r.messageID, r.exchange, r.routingKey, r.payload
		contentTypes[i], headers[i], orderingKeys[i], availableAts[i] = r.contentType, string(r.headers), r.orderingKey, r.availableAt
		props.set(i, r.props)
		withProps = withProps || r.props != (AMQPProperties{})
	}
	args := []any{msgIDs, exchanges, routingKeys, payloads, contentTypes, headers, orderingKeys, availableAts}
	query := insertPlain
	if withProps {
		query = insertMany
		args = append(args, props.typ, props.correlationID, props.replyTo, props.expiration, props.priority, props.appID)
	}
	tag, err := tx.Exec(ctx, fmt.Sprintf(query, t.name()), args...)
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

// propColumns are the optional AMQP properties of a batch of rows, one
// array per column, for insertMany.
type propColumns struct {
	typ, correlationID, replyTo, expiration, appID []string
	priority                                       []int16
}

func newPropColumns(n int) propColumns {
	return propColumns{typ: make([]string, n), correlationID: make([]string, n), replyTo: make([]string, n),
		expiration: make([]string, n), appID: make([]string, n), priority: make([]int16, n)}
}

func (c propColumns) set(i int, p AMQPProperties) {
	c.typ[i], c.correlationID[i], c.replyTo[i], c.expiration[i], c.appID[i] = p.Type, p.CorrelationID, p.ReplyTo, p.Expiration, p.AppID
	c.priority[i] = int16(p.Priority)
}
