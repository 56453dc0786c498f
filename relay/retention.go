package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// retentionLock is taken per batch (transaction-scoped), so only one relay
// deletes at a time and a dead relay never holds it.
const retentionLock = `SELECT pg_try_advisory_xact_lock(hashtextextended('outbox:retention:' || current_schema()::text, 0::bigint))`

// deletePublished removes one batch of old published rows. It walks the
// primary key from a cursor: published rows are old in id order, so the
// scan finds them at once; dead and pending rows are skipped, never
// deleted. No index on published_at is needed, which would cost every
// mark an extra index insert.
const deletePublished = `
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE id > $1 AND published_at < now() - $2::float8 * interval '1 millisecond'
    ORDER BY id LIMIT $3)
RETURNING id`

// retain deletes old published rows every RetentionInterval until ctx ends.
func (r *Relay) retain(ctx context.Context) {
	if r.cfg.Retention <= 0 && !r.cfg.DeletePublished {
		return
	}
	t := time.NewTicker(r.cfg.RetentionInterval)
	defer t.Stop()
	for {
		n, err := r.retainOnce(ctx)
		if err != nil && ctx.Err() == nil {
			r.log.Warn("retention failed", "err", err)
		} else if n > 0 {
			r.log.Debug("retention deleted published rows", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// retainOnce deletes batches until none is left or another relay holds
// the retention lock, and returns how many rows it deleted.
func (r *Relay) retainOnce(ctx context.Context) (int, error) {
	total := 0
	var after int64
	for ctx.Err() == nil {
		var deleted []int64
		err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
			var locked bool
			if err := tx.QueryRow(ctx, retentionLock).Scan(&locked); err != nil || !locked {
				return err
			}
			keep := r.cfg.Retention.Milliseconds()
			if r.cfg.DeletePublished {
				keep = 0 // rows published before the switch to none
			}
			rows, err := tx.Query(ctx, deletePublished, after, keep, r.cfg.RetentionBatch)
			if err != nil {
				return err
			}
			deleted, err = pgx.CollectRows(rows, pgx.RowTo[int64])
			return err
		})
		if err != nil {
			return total, fmt.Errorf("retention: %w", err)
		}
		total += len(deleted)
		r.m.retained.Add(float64(len(deleted)))
		if len(deleted) < r.cfg.RetentionBatch {
			return total, nil
		}
		after = deleted[len(deleted)-1]
		for _, id := range deleted {
			after = max(after, id)
		}
	}
	return total, ctx.Err()
}
