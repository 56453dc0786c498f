-- +goose Up

-- A database shared by many producers (see docs/sharing.md). A role that
-- may only insert outbox rows must not be able to write the relay's
-- bookkeeping, grow the relay's memory past its byte budget, run code as
-- another role, publish where the operator did not allow, or touch
-- another consumer's inbox rows. The column grants of `relay migrate
-- --app-role` do most of it; what follows holds whatever the grants.
--
-- The ALTERs take the tables' exclusive locks: give up after 5 s instead
-- of queueing every insert behind a wait (run `relay migrate` again).
SET LOCAL lock_timeout = '5s';

-- Functions that cannot be hijacked. A function's body resolves names
-- through the search_path of whoever runs it, and a call without exact
-- argument types (hashtextextended(text, 0): 0 is an integer, the function
-- takes a bigint) picks a better-matching function wherever one exists on
-- that path: a producer who may CREATE in a schema on it (PostgreSQL 14's
-- public, an upgraded database) could plant one and have it run as the
-- next role that inserts. Every function of the relay now carries its own
-- search_path (pg_catalog first, then only the temporary schema, which
-- holds nothing of anyone else), and calls with exact types.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_catalog.pg_notify(TG_TABLE_SCHEMA OPERATOR(pg_catalog.||) '.outbox', '');
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

-- The same lock key as migration 2's (hashtextextended takes a bigint
-- seed; 0 was cast to it), so writers of one key stay serialised while
-- old and new definitions overlap.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox_order_key() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended('outbox:'::text OPERATOR(pg_catalog.||) NEW.ordering_key, 0::bigint));
    NEW.id := pg_catalog.nextval(pg_catalog.pg_get_serial_sequence(
        pg_catalog.quote_ident(TG_TABLE_SCHEMA) OPERATOR(pg_catalog.||) '.outbox'::text, 'id'::text)::pg_catalog.regclass);
    RETURN NEW;
END;
$$;
-- +goose StatementEnd

-- Migration 3's header functions call only pg_catalog's functions and
-- operators; pinning their search_path makes sure those are the ones.
ALTER FUNCTION outbox_headers_amqp_size(jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION outbox_headers_amqp_width(jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION outbox_headers_amqp_name_max(jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION outbox_headers_amqp_number_over(jsonb) SET search_path = pg_catalog, pg_temp;

-- Where rows may go. Empty (the default), rows may name any exchange;
-- with entries, a row must match one: (exchange, NULL) allows every
-- routing key of an exchange, ('', queue) one queue through the default
-- exchange, ('', NULL) every queue through it, ('*', NULL) everything. `relay migrate` writes it from allowed_exchanges and
-- allowed_queues. Only the owner writes it; nobody else needs to read it
-- (the trigger below runs as the table's owner).
CREATE TABLE IF NOT EXISTS outbox_allowed_target (
    exchange    text NOT NULL,
    routing_key text
);

-- outbox_guard checks every new row before it gets in:
--   * its target: the allow-list above, and never one of the inbox's own
--     queues through the default exchange (<queue>.dead and
--     <queue>.retry.<delay>, which the inbox trusts as its own retries)
--     unless the allow-list names that queue (outbox_target_allowed);
--   * the relay's columns: a role that may not UPDATE the table (an
--     application) may not set attempts, suspected, dead_at, published_at,
--     last_error or created_at, nor an explicit id; a role that may UPDATE
--     it (the owner, the relay, an operator) could write them anyway and
--     is not refused. The application role of `relay migrate` has no
--     INSERT grant on those columns at all; this covers roles granted by
--     hand, and refuses with a message naming the column.
-- outbox_target_allowed is SECURITY DEFINER, so that it reads the
-- allow-list without granting it to anyone; both are created for the
-- schema being migrated (the DO block writes its name in), so the guard
-- calls the allow-list's function by its qualified name and the definer
-- function's search_path is pg_catalog then that schema. Every call and
-- operator in them is pg_catalog's with exact types. The guard is not
-- SECURITY DEFINER: has_table_privilege must ask about the inserting role.
-- Cost: see docs/sharing.md (measured per insert).
-- +goose StatementBegin
DO $do$
BEGIN
    EXECUTE pg_catalog.format($f$
CREATE OR REPLACE FUNCTION %1$I.outbox_target_allowed(ex text, rk text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, %1$I, pg_temp AS $$
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM %1$I.outbox_allowed_target a
                     WHERE a.exchange OPERATOR(pg_catalog.=) ex
                       AND a.routing_key OPERATOR(pg_catalog.=) rk) THEN true
        WHEN ex OPERATOR(pg_catalog.=) ''::text
             AND rk OPERATOR(pg_catalog.~) '\.(dead|retry\.[0-9]+(ms|s|m|h))$'::text THEN false
        WHEN NOT EXISTS (SELECT 1 FROM %1$I.outbox_allowed_target) THEN true
        ELSE EXISTS (SELECT 1 FROM %1$I.outbox_allowed_target a
                     WHERE a.routing_key IS NULL
                       AND (a.exchange OPERATOR(pg_catalog.=) ex OR a.exchange OPERATOR(pg_catalog.=) '*'::text))
    END
$$;

CREATE OR REPLACE FUNCTION %1$I.outbox_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col text;
BEGIN
    IF NOT %1$I.outbox_target_allowed(NEW.exchange, NEW.routing_key) THEN
        RAISE EXCEPTION 'outbox: exchange %% with routing key %% is not an allowed target',
            pg_catalog.quote_literal(NEW.exchange), pg_catalog.quote_literal(NEW.routing_key)
            USING ERRCODE = '42501',
                  HINT = 'The operator allows targets with allowed_exchanges and allowed_queues (relay migrate); the inbox''s own retry and dead-letter queues are refused unless allowed by name.';
    END IF;
    IF pg_catalog.has_table_privilege(TG_RELID, 'UPDATE'::text) THEN
        RETURN NEW;
    END IF;
    col := CASE
        WHEN NEW.attempts OPERATOR(pg_catalog.<>) 0 THEN 'attempts'
        WHEN NEW.suspected THEN 'suspected'
        WHEN NEW.dead_at IS NOT NULL THEN 'dead_at'
        WHEN NEW.published_at IS NOT NULL THEN 'published_at'
        WHEN NEW.last_error IS NOT NULL THEN 'last_error'
        WHEN NEW.created_at IS DISTINCT FROM pg_catalog.now() THEN 'created_at'
        WHEN pg_catalog.has_column_privilege(TG_RELID, 'id'::text, 'INSERT'::text)
             AND NEW.id IS DISTINCT FROM pg_catalog.currval(
                 pg_catalog.pg_get_serial_sequence(%2$L::text, 'id'::text)::pg_catalog.regclass)
             THEN 'id'
    END;
    IF col IS NOT NULL THEN
        RAISE EXCEPTION 'outbox: column %% is the relay''s: an application may not set it', col
            USING ERRCODE = '42501', COLUMN = col,
                  HINT = 'Insert only the message columns and leave the others to their defaults.';
    END IF;
    RETURN NEW;
END;
$$;
$f$, pg_catalog.current_schema(), pg_catalog.format('%I.outbox', pg_catalog.current_schema()));
END;
$do$;
-- +goose StatementEnd

-- BEFORE triggers fire in name order: the guard sees the row as written,
-- before outbox_order_key replaces a keyed row's id.
DROP TRIGGER IF EXISTS outbox_guard ON outbox;
CREATE TRIGGER outbox_guard BEFORE INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_guard();

-- Row limits, in migration 3's form (published and dead rows exempt, the
-- pending rows that break one parked first, with the reason):
--   * ordering_key: an AMQP short string's limits (at most 255 bytes, no
--     ASCII control characters): it is copied into logs, spans and
--     `relay status`, and a key is a name, not a payload;
--   * headers: at most 262,144 bytes of jsonb text, which is what the
--     relay receives (control characters come back as 6-byte \uXXXX
--     escapes, numbers as every digit). The header table limit of
--     migration 3 counts AMQP bytes; 129,000 control characters pass it
--     and come back as 774 KB. Twice the frame budget leaves every
--     ordinary header table (text about its AMQP size) well inside;
--   * reserved headers: names the broker or the inbox give meaning to
--     (x-inbox-*, x-death, x-first-death-*, x-last-death-*,
--     x-delivery-count, x-received-from, CC, BCC; any case). A consumer
--     trusts them as the broker's or the inbox's own.
-- relay.checkRow applies the same three limits to rows that reach it.
UPDATE outbox o
SET dead_at = now(), last_error = v.reason || ' (parked by migration 00006_shared_database)'
FROM (
    SELECT id, CASE
        WHEN octet_length(ordering_key) > 255 THEN
            format('bad_property: ordering_key: %s bytes, over the 255-byte limit of an AMQP short string',
                   to_char(octet_length(ordering_key), 'FM999,999,990'))
        WHEN ordering_key ~ '[\x01-\x1f\x7f]' THEN 'bad_property: ordering_key: holds a control character'
        WHEN headers = '{}' THEN NULL
        WHEN octet_length(headers::text) > 262144 THEN
            format('too_large: headers: %s bytes of JSON text, over the 262,144-byte limit',
                   to_char(octet_length(headers::text), 'FM999,999,999,990'))
        WHEN jsonb_path_exists(headers, 'strict $.keyvalue() ? (@.key like_regex "^(x-inbox-.*|x-death|x-first-death-.*|x-last-death-.*|x-delivery-count|x-received-from|cc|bcc)$" flag "i")') THEN
            'bad_headers: headers: a reserved header name (x-inbox-*, x-death, CC, BCC, ...)'
        WHEN NOT outbox_target_allowed(exchange, routing_key) THEN
            format('refused_target: exchange %s, routing key %s: an inbox retry or dead-letter queue', quote_literal(exchange), quote_literal(routing_key))
        END AS reason
    FROM outbox
    WHERE published_at IS NULL AND dead_at IS NULL
) v
WHERE o.id = v.id AND v.reason IS NOT NULL;

ALTER TABLE outbox
    DROP CONSTRAINT IF EXISTS outbox_ordering_key_shortstr,
    DROP CONSTRAINT IF EXISTS outbox_headers_text_size,
    DROP CONSTRAINT IF EXISTS outbox_headers_reserved,
    ADD CONSTRAINT outbox_ordering_key_shortstr CHECK (published_at IS NOT NULL OR dead_at IS NOT NULL
        OR ordering_key IS NULL OR (octet_length(ordering_key) <= 255 AND ordering_key !~ '[\x01-\x1f\x7f]')) NOT VALID,
    ADD CONSTRAINT outbox_headers_text_size CHECK (published_at IS NOT NULL OR dead_at IS NOT NULL
        OR headers = '{}' OR octet_length(headers::text) <= 262144) NOT VALID,
    ADD CONSTRAINT outbox_headers_reserved CHECK (published_at IS NOT NULL OR dead_at IS NOT NULL
        OR headers = '{}'
        OR NOT jsonb_path_exists(headers, 'strict $.keyvalue() ? (@.key like_regex "^(x-inbox-.*|x-death|x-first-death-.*|x-last-death-.*|x-delivery-count|x-received-from|cc|bcc)$" flag "i")')) NOT VALID;

-- Consumers isolated from each other. inbox_consumer registers a consumer
-- name to the role that runs it (`relay migrate --consumer-role R
-- --consumers a,b`). Under row-level security a role sees and writes the
-- inbox rows of the names registered to a role it belongs to; a role with
-- no registered name keeps what it had before (every unregistered name),
-- so a deployment that registers nothing works as before, and a
-- registered name is out of reach of every other role. The table's owner
-- is not subject to the policy. A policy's subqueries run as the querying
-- role, which therefore reads inbox_consumer (names and roles only).
CREATE TABLE IF NOT EXISTS inbox_consumer (
    consumer text    PRIMARY KEY,
    role     regrole NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_consumer_role_idx ON inbox_consumer (role);

ALTER TABLE inbox ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS inbox_consumer_isolation ON inbox;
CREATE POLICY inbox_consumer_isolation ON inbox
    USING (
        EXISTS (SELECT 1 FROM inbox_consumer c
                WHERE c.consumer = inbox.consumer AND pg_has_role(c.role, 'MEMBER'))
        OR (NOT EXISTS (SELECT 1 FROM inbox_consumer c WHERE c.consumer = inbox.consumer)
            AND NOT EXISTS (SELECT 1 FROM inbox_consumer c WHERE pg_has_role(c.role, 'MEMBER'))));

-- Inbox keys are bounded too: a consumer name and an AMQP message-id are
-- short strings.
ALTER TABLE inbox
    DROP CONSTRAINT IF EXISTS inbox_consumer_shortstr,
    DROP CONSTRAINT IF EXISTS inbox_message_id_shortstr,
    ADD CONSTRAINT inbox_consumer_shortstr CHECK (octet_length(consumer) <= 255 AND consumer !~ '[\x01-\x1f\x7f]') NOT VALID,
    ADD CONSTRAINT inbox_message_id_shortstr CHECK (octet_length(message_id) <= 255) NOT VALID;

-- +goose Down
ALTER TABLE inbox
    DROP CONSTRAINT IF EXISTS inbox_consumer_shortstr,
    DROP CONSTRAINT IF EXISTS inbox_message_id_shortstr;
DROP POLICY IF EXISTS inbox_consumer_isolation ON inbox;
ALTER TABLE inbox DISABLE ROW LEVEL SECURITY;
DROP TABLE IF EXISTS inbox_consumer;
ALTER TABLE outbox
    DROP CONSTRAINT IF EXISTS outbox_ordering_key_shortstr,
    DROP CONSTRAINT IF EXISTS outbox_headers_text_size,
    DROP CONSTRAINT IF EXISTS outbox_headers_reserved;
DROP TRIGGER IF EXISTS outbox_guard ON outbox;
DROP FUNCTION IF EXISTS outbox_guard();
DROP FUNCTION IF EXISTS outbox_target_allowed(text, text);
DROP TABLE IF EXISTS outbox_allowed_target;
ALTER FUNCTION outbox_headers_amqp_size(jsonb) RESET search_path;
ALTER FUNCTION outbox_headers_amqp_width(jsonb) RESET search_path;
ALTER FUNCTION outbox_headers_amqp_name_max(jsonb) RESET search_path;
ALTER FUNCTION outbox_headers_amqp_number_over(jsonb) RESET search_path;
