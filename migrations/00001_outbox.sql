-- +goose Up
-- The outbox table is a public contract: applications insert into it with
-- plain SQL. Column names documented in the README never change.
CREATE TABLE IF NOT EXISTS outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id   uuid        NOT NULL DEFAULT gen_random_uuid(),
    exchange     text        NOT NULL DEFAULT '',
    routing_key  text        NOT NULL,
    payload      bytea       NOT NULL,
    content_type text        NOT NULL DEFAULT 'application/json',
    headers      jsonb       NOT NULL DEFAULT '{}',
    ordering_key text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    available_at timestamptz NOT NULL DEFAULT now(),
    attempts     int         NOT NULL DEFAULT 0,
    last_error   text,
    published_at timestamptz,
    -- dead_at is set when a row is parked after too many failed attempts.
    -- A dead row is never retried until an operator requeues it.
    dead_at      timestamptz,
    CONSTRAINT outbox_message_id_key UNIQUE (message_id),
    CONSTRAINT outbox_headers_object CHECK (jsonb_typeof(headers) = 'object')
);

-- The claim query walks pending rows in id order; published and dead rows
-- leave this index, so it stays as small as the backlog.
CREATE INDEX IF NOT EXISTS outbox_pending_idx ON outbox (id)
    WHERE published_at IS NULL AND dead_at IS NULL;

-- Operators list dead rows; keep that cheap too.
CREATE INDEX IF NOT EXISTS outbox_dead_idx ON outbox (id)
    WHERE dead_at IS NOT NULL;

-- One notification per INSERT statement, not per row: a bulk insert of
-- 10,000 rows costs the writer one pg_notify. The channel is named after the
-- table's schema so relays of different schemas do not wake each other.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.outbox', '');
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

CREATE TABLE IF NOT EXISTS inbox (
    consumer     text        NOT NULL,
    message_id   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX IF NOT EXISTS inbox_processed_at_idx ON inbox (processed_at);

-- +goose Down
DROP TABLE IF EXISTS inbox;
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
DROP TABLE IF EXISTS outbox;
