package inbox

import (
	"context"
	"fmt"

	"github.com/outboxrelay/outboxrelay/internal/backoff"
)

// pruneInbox deletes one batch of this consumer's rows older than the
// window. The subquery walks inbox_processed_at_idx (the oldest rows
// first) and stops after $3 matches; the outer delete finds them by the
// primary key. Small batches keep each statement's locks and WAL short, so
// retention never stalls the consumers inserting beside it. The cutoff is
// the database's clock, like processed_at's default. %[1]s is the table.
const pruneInbox = `
DELETE FROM %[1]s
WHERE consumer = $1 AND message_id IN (
    SELECT message_id FROM %[1]s
    WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2::float8)
    ORDER BY processed_at
    LIMIT $3)`

// retain prunes at start and then every RetentionInterval until ctx ends.
func (c *Consumer) retain(ctx context.Context) {
	for {
		n, err := c.prune(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			c.log.Warn("inbox retention failed", "err", err, "deleted", n)
		case n > 0:
			c.log.Info("inbox retention deleted old rows", "deleted", n, "window", c.cfg.RetentionWindow)
		}
		if !backoff.Sleep(ctx.Done(), c.cfg.RetentionInterval) {
			return
		}
	}
}

// prune deletes batches until one comes back short.
func (c *Consumer) prune(ctx context.Context) (int64, error) {
	var total int64
	for ctx.Err() == nil {
		tag, err := c.cfg.DB.Exec(ctx, c.pruneSQL, c.cfg.Name, c.cfg.RetentionWindow.Seconds(), c.cfg.RetentionBatch)
		if err != nil {
			return total, fmt.Errorf("inbox: prune: %w", err)
		}
		n := tag.RowsAffected()
		total += n
		c.m.pruned.Add(float64(n))
		if n < int64(c.cfg.RetentionBatch) {
			break
		}
	}
	return total, nil
}
