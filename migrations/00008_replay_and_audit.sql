-- +goose Up

-- The ALTERs below take the table's exclusive lock: give up after 5 s
-- rather than queue the application's inserts behind a waiting ALTER
-- (see 00005). `relay migrate` can simply be run again.
SET LOCAL lock_timeout = '5s';

-- Replay. `relay replay` publishes published rows again by inserting
-- copies of them as new pending rows: the relay's own engine claims,
-- orders and marks them like any other row, so there is no second
-- publisher to race it, and a copy's new id puts it after everything of
-- its key that is already pending. replay_of is the id of the row a copy
-- was made from (NULL for every row an application wrote).
--
-- A same-id replay keeps the original message_id, so that a consumer's
-- inbox recognises what it already applied. message_id stays unique
-- among the rows applications write (replay_of IS NULL), the only rows
-- whose ids the public contract promised unique; copies may repeat it.
-- An application that inserts with ON CONFLICT (message_id) must now name
-- the index's predicate: ON CONFLICT (message_id) WHERE replay_of IS NULL.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS replay_of bigint;
ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_message_id_key;
CREATE UNIQUE INDEX IF NOT EXISTS outbox_message_id_key ON outbox (message_id) WHERE replay_of IS NULL;
-- Copies are few; finding one by message id should not scan the table.
CREATE INDEX IF NOT EXISTS outbox_replay_message_id_idx ON outbox (message_id) WHERE replay_of IS NOT NULL;

-- The console's search: by ordering key over every row (published ones
-- too; outbox_key_unpublished_idx holds only unpublished rows), and by
-- time. Both serve keyset pagination in id order (see console.go).
CREATE INDEX IF NOT EXISTS outbox_ordering_key_idx ON outbox (ordering_key, id) WHERE ordering_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_created_at_idx ON outbox (created_at, id);

-- Every operator action (requeue, retry, discard, replay), whoever ran it
-- from the CLI or the console. actor is the database role that ran it
-- (session_user: SET ROLE does not change it); via says which client.
CREATE TABLE IF NOT EXISTS relay_audit (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL DEFAULT session_user,
    via         text        NOT NULL DEFAULT '',
    action      text        NOT NULL,
    filter      jsonb       NOT NULL DEFAULT '{}',
    rows        bigint      NOT NULL DEFAULT 0,
    finished_at timestamptz
);
-- The grants (relay migrate --operator-role, --relay-role) allow INSERT of
-- every column but actor and at, and UPDATE of rows and finished_at alone,
-- so a role cannot write another's name or rewrite what it did.

-- +goose Down
DROP TABLE IF EXISTS relay_audit;
DROP INDEX IF EXISTS outbox_created_at_idx;
DROP INDEX IF EXISTS outbox_ordering_key_idx;
DROP INDEX IF EXISTS outbox_replay_message_id_idx;
DELETE FROM outbox WHERE replay_of IS NOT NULL;
DROP INDEX IF EXISTS outbox_message_id_key;
ALTER TABLE outbox ADD CONSTRAINT outbox_message_id_key UNIQUE (message_id);
ALTER TABLE outbox DROP COLUMN IF EXISTS replay_of;
