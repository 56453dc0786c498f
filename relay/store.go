package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// claimBatch takes the oldest due pending rows and locks them for this
// transaction. SKIP LOCKED lets several workers and relays claim disjoint
// batches without waiting on each other.
//
// Plan (PostgreSQL 15, 1M rows of which 50k pending): the partial index
// outbox_pending_idx holds only pending rows, so the scan reads the backlog
// in id order and stops at LIMIT; published and dead rows cost nothing.
//
//	Limit
//	  -> LockRows
//	       -> Index Scan using outbox_pending_idx on outbox
//	            Filter: (available_at <= now())
//
// Rows waiting for a retry (available_at in the future) are filtered, not
// indexed: they are few unless the broker refuses most traffic.
const claimBatch = `
SELECT id, message_id::text, exchange, routing_key, payload, content_type, headers, created_at, attempts
FROM outbox
WHERE published_at IS NULL AND dead_at IS NULL AND available_at <= now()
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED`

// markPublished and markFailed run together in one pgx.Batch: one round
// trip per batch, whatever its size.
const markPublished = `UPDATE outbox SET published_at = now() WHERE id = ANY($1)`

const markFailed = `
UPDATE outbox o SET
    attempts     = o.attempts + 1,
    last_error   = f.err,
    available_at = now() + f.delay_ms * interval '1 millisecond',
    dead_at      = CASE WHEN o.attempts + 1 >= $4 THEN now() END
FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS f(id, err, delay_ms)
WHERE o.id = f.id
RETURNING o.dead_at IS NOT NULL`

type claimed struct {
	id          int64
	messageID   string
	exchange    string
	routingKey  string
	payload     []byte
	contentType string
	headers     []byte
	createdAt   time.Time
	attempts    int
}

func claim(ctx context.Context, tx pgx.Tx, limit int) ([]claimed, error) {
	rows, err := tx.Query(ctx, claimBatch, limit)
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (claimed, error) {
		var c claimed
		err := row.Scan(&c.id, &c.messageID, &c.exchange, &c.routingKey, &c.payload, &c.contentType, &c.headers, &c.createdAt, &c.attempts)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	return out, nil
}

// mark records the batch's outcomes and reports how many rows went dead.
func mark(ctx context.Context, tx pgx.Tx, published []int64, failedIDs []int64, errs []string, delaysMS []int64, maxAttempts int) (int, error) {
	b := &pgx.Batch{}
	if len(published) > 0 {
		b.Queue(markPublished, published)
	}
	dead := 0
	if len(failedIDs) > 0 {
		b.Queue(markFailed, failedIDs, errs, delaysMS, maxAttempts).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var isDead bool
				if err := rows.Scan(&isDead); err != nil {
					return err
				}
				if isDead {
					dead++
				}
			}
			return rows.Err()
		})
	}
	if b.Len() == 0 {
		return 0, nil
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return 0, fmt.Errorf("mark: %w", err)
	}
	return dead, nil
}
