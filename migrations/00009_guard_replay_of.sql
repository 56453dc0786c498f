-- +goose Up

-- replay_of marks a row as an operator's replay copy (00008). Copies are
-- left out of the unique index on message_id, so a role that could set
-- replay_of could insert a second row with a message id already taken,
-- or pass a row off as a replay. The application role of `relay migrate`
-- has no INSERT grant on the column; this refuses it, like outbox_guard
-- refuses the other bookkeeping columns, for a role granted INSERT on
-- every column by hand: only a role that may UPDATE the table (the
-- owner, the relay, an operator running `relay replay`) may set it.
-- The WHEN clause keeps the function off every ordinary insert. It is not
-- SECURITY DEFINER: has_table_privilege must ask about the inserting role.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox_guard_replay() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT pg_catalog.has_table_privilege(TG_RELID, 'UPDATE'::text) THEN
        RAISE EXCEPTION 'outbox: column replay_of is the relay''s: an application may not set it'
            USING ERRCODE = '42501', COLUMN = 'replay_of',
                  HINT = 'Insert only the message columns; relay replay makes replay copies.';
    END IF;
    RETURN NEW;
END;
$$;
-- +goose StatementEnd

-- BEFORE triggers fire in name order: after outbox_guard, before
-- outbox_order_key.
DROP TRIGGER IF EXISTS outbox_guard_replay ON outbox;
CREATE TRIGGER outbox_guard_replay BEFORE INSERT ON outbox
    FOR EACH ROW WHEN (NEW.replay_of IS NOT NULL) EXECUTE FUNCTION outbox_guard_replay();

-- +goose Down
DROP TRIGGER IF EXISTS outbox_guard_replay ON outbox;
DROP FUNCTION IF EXISTS outbox_guard_replay();
