package relay

import (
	"context"
	"fmt"
	"sort"

	"github.com/jackc/pgx/v5"
)

// discard deletes dead rows, and only dead rows: a pending row is the
// relay's to publish, a published one retention's to delete.
const discard = `
DELETE FROM outbox WHERE dead_at IS NOT NULL AND id = ANY($1)
RETURNING id, message_id::text, exchange, routing_key, attempts, coalesce(last_error, ''), created_at, dead_at`

// Discard deletes the dead rows with the given ids and returns them as
// they were (sorted by id), so the caller can say what it removed. An id
// that is not a dead row is left alone and is not among them. Deleting a
// dead keyed row releases its key's later rows under OrderingBlock.
//
// Deleting, rather than marking the row published with a note, keeps
// published_at meaning "the broker confirmed it": metrics, retention and
// anyone reading the table can trust it.
func Discard(ctx context.Context, db DB, ids []int64) ([]DeadRow, error) {
	out, err := queryDead(ctx, db, "discard", discard, ids)
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// retryNow makes pending rows due now; the notification wakes the relays
// listening on the schema's channel, as an insert does.
const (
	retryNow = `
UPDATE outbox SET available_at = now()
WHERE id = ANY($1) AND published_at IS NULL AND dead_at IS NULL
RETURNING id`
	// The channel the insert trigger notifies: named after the schema of
	// the outbox table this connection's search_path finds, which need
	// not be its current schema.
	wakeRelays = `SELECT pg_notify(n.nspname::text || '.outbox', '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = 'outbox'::regclass`
)

// RetryNow makes the pending rows with the given ids (waiting for a retry,
// or delayed by available_at) due now, and wakes the relays. It returns
// the ids it changed, sorted; a published, dead or unknown id is not among
// them (requeue a dead row with Requeue). Its attempts are kept.
func RetryNow(ctx context.Context, db DB, ids []int64) ([]int64, error) {
	rows, err := db.Query(ctx, retryNow, ids)
	if err != nil {
		return nil, fmt.Errorf("retry: %w", err)
	}
	done, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("retry: %w", err)
	}
	if len(done) > 0 {
		if _, err := db.Exec(ctx, wakeRelays); err != nil {
			return done, fmt.Errorf("retry: wake the relays: %w", err)
		}
	}
	sort.Slice(done, func(i, j int) bool { return done[i] < done[j] })
	return done, nil
}

// BlockedKey is an ordering key with a dead row: under OrderingBlock its
// later rows wait until the row is requeued or discarded.
type BlockedKey struct {
	Key     string
	DeadID  int64 // the key's first dead row
	Waiting int64 // pending rows of the key after it
}

// listBlocked reads the dead keyed rows from outbox_dead_idx and counts
// each key's pending rows after its first dead one on
// outbox_key_unpublished_idx.
const listBlocked = `
SELECT d.ordering_key, d.dead_id,
       (SELECT count(*) FROM outbox p
        WHERE p.ordering_key = d.ordering_key AND p.published_at IS NULL AND p.dead_at IS NULL
          AND p.id > d.dead_id)
FROM (SELECT ordering_key, min(id) AS dead_id FROM outbox
      WHERE dead_at IS NOT NULL AND ordering_key IS NOT NULL
      GROUP BY ordering_key) d
ORDER BY d.dead_id
LIMIT $1`

// ListBlockedKeys returns up to limit keys with a dead row, the key whose
// dead row is oldest first.
func ListBlockedKeys(ctx context.Context, db DB, limit int) ([]BlockedKey, error) {
	rows, err := db.Query(ctx, listBlocked, limit)
	if err != nil {
		return nil, fmt.Errorf("blocked keys: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (BlockedKey, error) {
		var b BlockedKey
		err := r.Scan(&b.Key, &b.DeadID, &b.Waiting)
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("blocked keys: %w", err)
	}
	return out, nil
}
