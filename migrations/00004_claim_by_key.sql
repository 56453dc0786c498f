-- +goose Up

-- Unkeyed pending rows get an index of their own. The claim reads rows
-- without an ordering key in id order from this index, and the heads of
-- keyed rows from outbox_key_unpublished_idx (ordering_key, id), so neither
-- half of the claim walks the other half's backlog: a deep keyed backlog no
-- longer slows the unkeyed claim, and the reverse. The old index of every
-- pending row served only that mixed walk and the status counts, which now
-- read the two halves separately.
CREATE INDEX IF NOT EXISTS outbox_pending_unkeyed_idx ON outbox (id)
    WHERE published_at IS NULL AND dead_at IS NULL AND ordering_key IS NULL;
DROP INDEX IF EXISTS outbox_pending_idx;

-- A row is suspected when the broker connection died while it was in
-- flight with others, so any of them may have caused it. Suspects are
-- published alone, one at a time, until they are confirmed (the flag no
-- longer matters) or one kills the connection alone (then it is charged an
-- attempt, and ends dead after max_attempts like any failing row).
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS suspected boolean NOT NULL DEFAULT false;

-- +goose Down
ALTER TABLE outbox DROP COLUMN IF EXISTS suspected;
CREATE INDEX IF NOT EXISTS outbox_pending_idx ON outbox (id)
    WHERE published_at IS NULL AND dead_at IS NULL;
DROP INDEX IF EXISTS outbox_pending_unkeyed_idx;
