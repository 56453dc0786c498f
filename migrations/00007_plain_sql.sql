-- +goose Up

-- An insert path without escaping traps (see docs/inserting.md).
--
-- payload is bytea, and PostgreSQL reads text given for a bytea as bytea
-- input, where a backslash starts an escape: a driver that sends a string
-- (psycopg2's str, node-postgres's string, a psql literal without
-- convert_to) silently turns the JSON "C:\\temp" into "C:\temp", or fails
-- with "invalid input syntax for type bytea". outbox_enqueue takes the
-- payload as text (stored as its UTF-8 bytes, backslashes as written),
-- as jsonb (stored as its text form), or as bytea (stored as is), and
-- refuses a payload that is not valid UTF-8 JSON when content_type says
-- JSON. It returns the new row's id and message_id.
--
-- Every function here is SECURITY INVOKER: it inserts with the caller's
-- own rights (the INSERT and SELECT (id, message_id) grants of `relay
-- migrate --app-role`), so it gives no one anything the table does not.
-- Each pins its search_path to pg_catalog, the schema being migrated and
-- then pg_temp (listed last, so a temporary table cannot stand in for the
-- outbox), and calls pg_catalog's functions and operators by name with
-- exact types, so a function planted on a caller's search_path is never
-- the one that runs. The DO block writes the schema's name in.
--
-- The check of JSON payloads on plain INSERTs (outbox_payload_check) is
-- created disabled: rows written today with the default content_type and
-- a payload that is not JSON would be refused. Enable it with
--   ALTER TABLE outbox ENABLE TRIGGER outbox_payload_check;
-- Cost per insert: docs/inserting.md (make bench prints it).
SET LOCAL lock_timeout = '5s';

-- +goose StatementBegin
DO $do$
BEGIN
    -- What outbox_enqueue returns: SELECT * FROM outbox_enqueue(...) reads
    -- as the columns id and message_id.
    IF pg_catalog.to_regtype(pg_catalog.format('%I.outbox_enqueued', pg_catalog.current_schema())) IS NULL THEN
        EXECUTE pg_catalog.format('CREATE TYPE %I.outbox_enqueued AS (id bigint, message_id uuid)', pg_catalog.current_schema());
    END IF;
    EXECUTE pg_catalog.format($f$
-- outbox_content_type_json says whether an AMQP content type is JSON:
-- application/json or application/<anything>+json, any case, with or
-- without parameters (; charset=utf-8).
CREATE OR REPLACE FUNCTION %1$I.outbox_content_type_json(ct text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, %1$I, pg_temp AS $$
    SELECT ct OPERATOR(pg_catalog.~*) '^application/([^;/]*\+)?json[[:space:]]*(;.*)?$'::text
$$;

-- outbox_payload_problem returns why payload cannot be the body of a
-- message of content type ct, or NULL when it can: a JSON content type
-- needs valid UTF-8 holding one JSON value (json's parser: the text is
-- checked, not rebuilt, so "\u0000" and duplicate keys are accepted as
-- JSON allows). Other content types are not looked at.
CREATE OR REPLACE FUNCTION %1$I.outbox_payload_problem(payload bytea, ct text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, %1$I, pg_temp AS $$
DECLARE
    body text;
    detail text;
BEGIN
    IF payload IS NULL OR ct IS NULL OR NOT %1$I.outbox_content_type_json(ct) THEN
        RETURN NULL;
    END IF;
    BEGIN
        body := pg_catalog.convert_from(payload, 'UTF8'::name);
    EXCEPTION WHEN data_exception THEN
        RETURN 'not valid UTF-8 (' OPERATOR(pg_catalog.||) SQLERRM OPERATOR(pg_catalog.||) ')';
    END;
    BEGIN
        PERFORM body::pg_catalog.json;
    EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
        GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
        RETURN 'not valid JSON (' OPERATOR(pg_catalog.||) SQLERRM
            OPERATOR(pg_catalog.||) coalesce(': ' OPERATOR(pg_catalog.||) nullif(detail, ''::text), ''::text)
            OPERATOR(pg_catalog.||) ')';
    END;
    RETURN NULL;
END;
$$;

-- outbox_refuse_payload raises the error both the insert path and the
-- table's check give, naming the fix.
CREATE OR REPLACE FUNCTION %1$I.outbox_refuse_payload(problem text, ct text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, %1$I, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'outbox: payload is %%, but content_type %% says JSON', problem, pg_catalog.quote_literal(ct)
        USING ERRCODE = '23514', CONSTRAINT = 'outbox_payload_json',
              HINT = 'Pass JSON as text: outbox_enqueue(exchange, routing_key, payload => json_text), or convert_to(json_text, ''UTF8'') in an INSERT; a string sent for a bytea is read as bytea escapes. Or set content_type to what the payload is (application/octet-stream).';
END;
$$;

-- outbox_enqueue inserts one outbox row and returns its id and
-- message_id. The bytea form stores payload as is; the text and jsonb
-- forms below store the UTF-8 bytes of their text. NULL content_type,
-- headers, available_at or message_id take the column's default.
CREATE OR REPLACE FUNCTION %1$I.outbox_enqueue(
    exchange text, routing_key text, payload bytea,
    content_type text DEFAULT 'application/json', headers jsonb DEFAULT '{}',
    ordering_key text DEFAULT NULL, available_at timestamptz DEFAULT NULL, message_id uuid DEFAULT NULL,
    type text DEFAULT NULL, correlation_id text DEFAULT NULL, reply_to text DEFAULT NULL,
    expiration text DEFAULT NULL, priority integer DEFAULT NULL, app_id text DEFAULT NULL)
RETURNS %1$I.outbox_enqueued
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, %1$I, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ct constant text := coalesce($4, 'application/json'::text);
    problem constant text := %1$I.outbox_payload_problem($3, ct);
    res %1$I.outbox_enqueued;
BEGIN
    IF problem IS NOT NULL THEN
        PERFORM %1$I.outbox_refuse_payload(problem, ct);
    END IF;
    INSERT INTO %1$I.outbox (exchange, routing_key, payload, content_type, headers, ordering_key,
                             available_at, message_id, type, correlation_id, reply_to, expiration, priority, app_id)
    VALUES ($1, $2, $3, ct, coalesce($5, '{}'::jsonb), $6,
            coalesce($7, pg_catalog.now()), coalesce($8, pg_catalog.gen_random_uuid()),
            $9, $10, $11, $12, $13, $14)
    RETURNING id, message_id INTO res.id, res.message_id;
    RETURN res;
END;
$$;

CREATE OR REPLACE FUNCTION %1$I.outbox_enqueue(
    exchange text, routing_key text, payload text,
    content_type text DEFAULT 'application/json', headers jsonb DEFAULT '{}',
    ordering_key text DEFAULT NULL, available_at timestamptz DEFAULT NULL, message_id uuid DEFAULT NULL,
    type text DEFAULT NULL, correlation_id text DEFAULT NULL, reply_to text DEFAULT NULL,
    expiration text DEFAULT NULL, priority integer DEFAULT NULL, app_id text DEFAULT NULL)
RETURNS %1$I.outbox_enqueued
LANGUAGE sql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, %1$I, pg_temp AS $$
    SELECT %1$I.outbox_enqueue($1, $2, pg_catalog.convert_to($3, 'UTF8'::name), $4, $5, $6, $7, $8,
                               $9, $10, $11, $12, $13, $14)
$$;

CREATE OR REPLACE FUNCTION %1$I.outbox_enqueue(
    exchange text, routing_key text, payload jsonb,
    content_type text DEFAULT 'application/json', headers jsonb DEFAULT '{}',
    ordering_key text DEFAULT NULL, available_at timestamptz DEFAULT NULL, message_id uuid DEFAULT NULL,
    type text DEFAULT NULL, correlation_id text DEFAULT NULL, reply_to text DEFAULT NULL,
    expiration text DEFAULT NULL, priority integer DEFAULT NULL, app_id text DEFAULT NULL)
RETURNS %1$I.outbox_enqueued
LANGUAGE sql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, %1$I, pg_temp AS $$
    SELECT %1$I.outbox_enqueue($1, $2, pg_catalog.convert_to(pg_catalog.jsonb_out($3)::text, 'UTF8'::name), $4, $5, $6, $7, $8,
                               $9, $10, $11, $12, $13, $14)
$$;

-- The check of plain INSERTs, when enabled (see the top of this file).
CREATE OR REPLACE FUNCTION %1$I.outbox_payload_check() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, %1$I, pg_temp AS $$
DECLARE
    problem constant text := %1$I.outbox_payload_problem(NEW.payload, NEW.content_type);
BEGIN
    IF problem IS NOT NULL THEN
        PERFORM %1$I.outbox_refuse_payload(problem, NEW.content_type);
    END IF;
    RETURN NEW;
END;
$$;
$f$, pg_catalog.current_schema());
END;
$do$;
-- +goose StatementEnd

DROP TRIGGER IF EXISTS outbox_payload_check ON outbox;
CREATE TRIGGER outbox_payload_check BEFORE INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_payload_check();
ALTER TABLE outbox DISABLE TRIGGER outbox_payload_check;

-- +goose Down
DROP TRIGGER IF EXISTS outbox_payload_check ON outbox;
DROP FUNCTION IF EXISTS outbox_payload_check();
DROP FUNCTION IF EXISTS outbox_enqueue(text, text, jsonb, text, jsonb, text, timestamptz, uuid, text, text, text, text, integer, text);
DROP FUNCTION IF EXISTS outbox_enqueue(text, text, text, text, jsonb, text, timestamptz, uuid, text, text, text, text, integer, text);
DROP FUNCTION IF EXISTS outbox_enqueue(text, text, bytea, text, jsonb, text, timestamptz, uuid, text, text, text, text, integer, text);
DROP FUNCTION IF EXISTS outbox_refuse_payload(text, text);
DROP FUNCTION IF EXISTS outbox_payload_problem(bytea, text);
DROP FUNCTION IF EXISTS outbox_content_type_json(text);
DROP TYPE IF EXISTS outbox_enqueued;
