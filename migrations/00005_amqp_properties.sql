-- +goose Up

-- The ALTER below takes the table's exclusive lock. It waits behind relay
-- batches in flight (each holds its rows until the broker confirms), and
-- every insert of the application would queue behind the waiting ALTER:
-- give up after 5 s instead. `relay migrate` then fails naming the lock
-- timeout and can simply be run again.
SET LOCAL lock_timeout = '5s';

-- Optional AMQP basic properties, one nullable column each, named after the
-- property. NULL (or '' for the text columns, 0 for priority) means "not
-- sent". Separate columns rather than one jsonb: a plain-SQL writer sets
-- them like any other column, PostgreSQL checks their types (priority is a
-- number), and each limit below is a constraint named after its column.
ALTER TABLE outbox
    ADD COLUMN IF NOT EXISTS type           text,
    ADD COLUMN IF NOT EXISTS correlation_id text,
    ADD COLUMN IF NOT EXISTS reply_to       text,
    ADD COLUMN IF NOT EXISTS expiration     text,
    ADD COLUMN IF NOT EXISTS priority       smallint,
    ADD COLUMN IF NOT EXISTS app_id         text;

-- The limits of outbox.CheckAMQPProperties. Unlike migration 3's, they
-- hold for every row, dead and published ones too: no row written before
-- them can break them (the columns are new), so nothing needs exempting.
-- Every existing row holds NULL in the new columns, so the constraints are
-- added NOT VALID (no scan of the table under its exclusive lock); they are
-- enforced on every insert and update from now on.
--
-- Short strings: at most 255 bytes, no ASCII control characters.
-- expiration: RabbitMQ's per-message TTL, a whole number of milliseconds
-- written in decimal digits, at most 4,294,967,295; RabbitMQ closes the
-- channel (PRECONDITION_FAILED) on anything else. The CASE keeps the cast
-- from running on text that is not digits.
-- priority: an AMQP octet, 0 to 255.
-- Dropped first so that the migration can be applied again (it is
-- idempotent, as the earlier ones are).
ALTER TABLE outbox
    DROP CONSTRAINT IF EXISTS outbox_type_shortstr,
    DROP CONSTRAINT IF EXISTS outbox_correlation_id_shortstr,
    DROP CONSTRAINT IF EXISTS outbox_reply_to_shortstr,
    DROP CONSTRAINT IF EXISTS outbox_app_id_shortstr,
    DROP CONSTRAINT IF EXISTS outbox_expiration_ms,
    DROP CONSTRAINT IF EXISTS outbox_priority_range,
    ADD CONSTRAINT outbox_type_shortstr CHECK (type IS NULL
        OR (octet_length(type) <= 255 AND type !~ '[\x01-\x1f\x7f]')) NOT VALID,
    ADD CONSTRAINT outbox_correlation_id_shortstr CHECK (correlation_id IS NULL
        OR (octet_length(correlation_id) <= 255 AND correlation_id !~ '[\x01-\x1f\x7f]')) NOT VALID,
    ADD CONSTRAINT outbox_reply_to_shortstr CHECK (reply_to IS NULL
        OR (octet_length(reply_to) <= 255 AND reply_to !~ '[\x01-\x1f\x7f]')) NOT VALID,
    ADD CONSTRAINT outbox_app_id_shortstr CHECK (app_id IS NULL
        OR (octet_length(app_id) <= 255 AND app_id !~ '[\x01-\x1f\x7f]')) NOT VALID,
    ADD CONSTRAINT outbox_expiration_ms CHECK (expiration IS NULL OR expiration = ''
        OR CASE WHEN expiration ~ '^[0-9]{1,10}$' THEN expiration::bigint <= 4294967295 ELSE false END) NOT VALID,
    ADD CONSTRAINT outbox_priority_range CHECK (priority IS NULL OR priority BETWEEN 0 AND 255) NOT VALID;

-- +goose Down
ALTER TABLE outbox
    DROP COLUMN IF EXISTS type,
    DROP COLUMN IF EXISTS correlation_id,
    DROP COLUMN IF EXISTS reply_to,
    DROP COLUMN IF EXISTS expiration,
    DROP COLUMN IF EXISTS priority,
    DROP COLUMN IF EXISTS app_id;
