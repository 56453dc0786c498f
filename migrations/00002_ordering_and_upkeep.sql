-- +goose Up

-- Per-key commit order. Two transactions writing the same ordering_key could
-- otherwise commit in the opposite order of their ids, and a relay would see
-- (and publish) the higher id first. A transaction-scoped advisory lock on
-- the key, taken before the row gets its id, serialises writers of one key
-- from the insert to the commit, so id order is commit order per key. The id
-- the identity default drew before the lock is replaced by a fresh one (the
-- sequence only leaves a gap). Rows without a key pay nothing: the WHEN
-- clause skips the function. This works for plain-SQL inserts too.
--
-- A transaction that inserts several keys takes their locks in insert
-- order; two transactions taking two keys in opposite orders can deadlock
-- (PostgreSQL aborts one). outbox.Enqueue sorts by key to avoid that.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox_order_key() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('outbox:' || NEW.ordering_key, 0));
    NEW.id := nextval(pg_get_serial_sequence(quote_ident(TG_TABLE_SCHEMA) || '.outbox', 'id'));
    RETURN NEW;
END;
$$;
-- +goose StatementEnd

DROP TRIGGER IF EXISTS outbox_order_key ON outbox;
CREATE TRIGGER outbox_order_key BEFORE INSERT ON outbox
    FOR EACH ROW WHEN (NEW.ordering_key IS NOT NULL) EXECUTE FUNCTION outbox_order_key();

-- The claim query asks, for a keyed row, whether an earlier row of its key
-- is still unpublished (pending, retrying or dead). This index answers that
-- with one probe and holds only unpublished keyed rows.
CREATE INDEX IF NOT EXISTS outbox_key_unpublished_idx ON outbox (ordering_key, id)
    WHERE published_at IS NULL AND ordering_key IS NOT NULL;

-- The table churns: every row is inserted, updated once and later deleted by
-- retention. Vacuum it after 2% of it changed instead of the default 20%.
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02
);
ALTER TABLE inbox SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000
);

-- +goose Down
ALTER TABLE inbox RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold);
ALTER TABLE outbox RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
    autovacuum_analyze_scale_factor, autovacuum_vacuum_insert_scale_factor);
DROP INDEX IF EXISTS outbox_key_unpublished_idx;
DROP TRIGGER IF EXISTS outbox_order_key ON outbox;
DROP FUNCTION IF EXISTS outbox_order_key();
