-- +goose Up

-- Row limits: what AMQP 0-9-1, RabbitMQ and amqp091-go readers can carry,
-- so that a plain-SQL INSERT of a row the relay could never publish fails
-- at once, naming the limit, instead of being parked dead later. The same
-- limits, in the same words, are outbox.CheckProperties and
-- outbox.DecodeHeaders (Go), which outbox.Enqueue and the relay apply;
-- outbox/limits_db_test.go checks that the two agree.
--
-- Every constraint exempts published and dead rows ("published_at IS NOT
-- NULL OR dead_at IS NOT NULL OR ..."). That is what lets this migration
-- (and the relay) cope with rows written before it:
--   * a CHECK is checked against every new row version, so an UPDATE of an
--     old violating row would fail, even one that only marks it dead, and
--     NOT VALID would not help (it skips the check of existing rows, not of
--     later updates). With the exemption, a dead or published row can be
--     updated freely, so the relay's marks and an operator's edits of old
--     rows keep working;
--   * the pending violating rows are parked first (below), after which
--     every row satisfies every constraint, so the constraints are added
--     validated: the planner and a later reader can trust them.
-- Requeueing a dead row that still violates a limit (setting dead_at back
-- to NULL) fails with the constraint's name: it could only die again. Fix
-- the field in the same UPDATE, e.g.
--   UPDATE outbox SET dead_at = NULL, attempts = 0, headers = '{}' WHERE id = 42;
--
-- Adding a validated constraint scans the table under an ACCESS EXCLUSIVE
-- lock; the exemption makes published rows cheap to check (their headers
-- are not read), so the scan costs about one pass over the heap.

-- outbox_headers_amqp_size is the exact size of the header table as the
-- relay publishes it (amqp091-go's writeTable): a 4-byte length, then per
-- entry a short-string name (1 + bytes) and a field: string 'S' 5 + bytes,
-- number ('l' or 'd') 9, boolean 2, null 1, table or array 5 + entries.
-- Summed over every node of the document: each node's own bytes, plus
-- 1 + name bytes for every object member; the root counted as a table
-- (5) is one more than its 4-byte length, hence the - 1. The functions use
-- only pg_catalog, so they work whatever the search_path (pg_restore
-- empties it). Byte lengths assume a UTF8 database, as the relay does.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox_headers_amqp_size(h jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (SELECT coalesce(sum(CASE jsonb_typeof(n.v)
                                    WHEN 'string'  THEN 5 + octet_length(n.v #>> '{}')
                                    WHEN 'number'  THEN 9
                                    WHEN 'boolean' THEN 2
                                    WHEN 'null'    THEN 1
                                    ELSE 5
                                END), 0) - 1
            FROM jsonb_path_query(h, 'strict $.**') AS n(v))
         + (SELECT coalesce(sum(1 + octet_length(k.k)), 0)
            FROM jsonb_path_query(h, 'strict $.** ? (@.type() == "object")') AS o(v),
                 jsonb_object_keys(o.v) AS k(k))
$$;
-- +goose StatementEnd

-- outbox_headers_amqp_width is the largest number of entries in one table
-- or array of the document, the root included.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox_headers_amqp_width(h jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(max(CASE jsonb_typeof(c.v)
                            WHEN 'array' THEN jsonb_array_length(c.v)
                            ELSE (SELECT count(*) FROM jsonb_object_keys(c.v))
                        END), 0)
    FROM jsonb_path_query(h, 'strict $.** ? (@.type() == "object" || @.type() == "array")') AS c(v)
$$;
-- +goose StatementEnd

-- outbox_headers_amqp_name_max is the longest member name, in bytes, at
-- any level (every one is an AMQP short string).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox_headers_amqp_name_max(h jsonb) RETURNS int
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(max(octet_length(k.k)), 0)
    FROM jsonb_path_query(h, 'strict $.** ? (@.type() == "object")') AS o(v),
         jsonb_object_keys(o.v) AS k(k)
$$;
-- +goose StatementEnd

-- outbox_headers_amqp_number_over says whether a number of the document
-- is one the relay would turn into an infinite double: |x| at or past
-- 2^1024 - 2^970, where Go's ParseFloat stops rounding to the largest
-- double. jsonb keeps numbers exact, so the bound is exact too.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION outbox_headers_amqp_number_over(h jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT jsonb_path_exists(h, 'strict $.** ? (@.type() == "number" && (@ >= $max || @ <= $min))',
        '{"max": 179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792,
          "min": -179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792}')
$$;
-- +goose StatementEnd

-- Park the pending rows that break a limit, with the limit as last_error
-- in the relay's "reason: field: detail" form. This runs before the
-- constraints exist, so the UPDATE itself cannot be refused. The pending
-- partial index finds the candidates; only their headers are read.
UPDATE outbox o
SET dead_at = now(), last_error = v.reason || ' (parked by migration 00003_row_limits)'
FROM (
    SELECT id, CASE
        WHEN octet_length(exchange) > 255 THEN
            format('bad_property: exchange: %s bytes, over the 255-byte limit of an AMQP short string',
                   to_char(octet_length(exchange), 'FM999,999,990'))
        WHEN octet_length(routing_key) > 255 THEN
            format('bad_property: routing_key: %s bytes, over the 255-byte limit of an AMQP short string',
                   to_char(octet_length(routing_key), 'FM999,999,990'))
        WHEN octet_length(content_type) > 255 THEN
            format('bad_property: content_type: %s bytes, over the 255-byte limit of an AMQP short string',
                   to_char(octet_length(content_type), 'FM999,999,990'))
        WHEN exchange ~ '[\x01-\x1f\x7f]' THEN 'bad_property: exchange: holds a control character'
        WHEN routing_key ~ '[\x01-\x1f\x7f]' THEN 'bad_property: routing_key: holds a control character'
        WHEN content_type ~ '[\x01-\x1f\x7f]' THEN 'bad_property: content_type: holds a control character'
        WHEN headers = '{}' THEN NULL
        WHEN outbox_headers_amqp_name_max(headers) > 255 THEN
            'bad_headers: headers: a name is over the 255-byte limit of an AMQP short string'
        WHEN outbox_headers_amqp_width(headers) > 8192 THEN
            'bad_headers: headers: a table or array has over 8,192 entries'
        WHEN jsonb_path_exists(headers, 'strict $.**{33 to last} ? (@.type() == "object" || @.type() == "array")') THEN
            'bad_headers: headers: tables and arrays nest over 32 deep'
        WHEN outbox_headers_amqp_number_over(headers) THEN
            'bad_headers: headers: a number is out of the range of a double'
        WHEN outbox_headers_amqp_size(headers) > 129724 THEN
            format('too_large: headers: the header table is %s bytes, over the 129,724-byte budget for frame_max 131,072',
                   to_char(outbox_headers_amqp_size(headers), 'FM999,999,999,990'))
        END AS reason
    FROM outbox
    WHERE published_at IS NULL AND dead_at IS NULL
) v
WHERE o.id = v.id AND v.reason IS NOT NULL;

-- Short strings: at most 255 bytes (AMQP), no ASCII control characters
-- (the relay refuses them; see outbox.CheckProperties). PostgreSQL text
-- never holds NUL or malformed UTF-8 in a UTF8 database.
ALTER TABLE outbox
    ADD CONSTRAINT outbox_exchange_len CHECK (published_at IS NOT NULL OR dead_at IS NOT NULL
        OR octet_length(exchange) <= 255),
    ADD CONSTRAINT outbox_routing_key_len CHECK (published_at IS NOT NULL OR dead_at IS NOT NULL
        OR octet_length(routing_key) <= 255),
    ADD CONSTRAINT outbox_content_type_len CHECK (published_at IS NOT NULL OR dead_at IS NOT NULL
        OR octet_length(content_type) <= 255),
    ADD CONSTRAINT outbox_exchange_chars CHECK (published_at IS NOT NULL OR dead_at IS NOT NULL
        OR exchange !~ '[\x01-\x1f\x7f]'),
    ADD CONSTRAINT outbox_routing_key_chars CHECK (published_at IS NOT NULL OR dead_at IS NOT NULL
        OR routing_key !~ '[\x01-\x1f\x7f]'),
    ADD CONSTRAINT outbox_content_type_chars CHECK (published_at IS NOT NULL OR dead_at IS NOT NULL
        OR content_type !~ '[\x01-\x1f\x7f]'),
    -- Headers. The functions walk the whole document (tens of
    -- microseconds for a small one), so each check is skipped when the
    -- jsonb text is too short to break its limit (about 2 microseconds):
    -- a 256-byte name needs more than 256 bytes of text; 8,193 array
    -- elements need 8,193 values and 8,192 ", " separators (24,577 bytes);
    -- and the header table is at most 14/3 bytes per byte of text (the
    -- worst shape is "[0]": 3 bytes of text, an array 'A' of 5 bytes
    -- holding an int64 of 9), so text of 25,944 bytes or fewer encodes to
    -- at most 121,072 bytes, under the budget. Typical headers (a
    -- traceparent, a few ids) never reach the functions.
    ADD CONSTRAINT outbox_header_name_len CHECK (published_at IS NOT NULL OR dead_at IS NOT NULL
        OR octet_length(headers::text) <= 256 OR outbox_headers_amqp_name_max(headers) <= 255),
    -- amqp091-go readers refuse a table or array of more than 8,192 entries.
    ADD CONSTRAINT outbox_headers_width CHECK (published_at IS NOT NULL OR dead_at IS NOT NULL
        OR octet_length(headers::text) <= 24576 OR outbox_headers_amqp_width(headers) <= 8192),
    -- ... and a table or array nested deeper than 32 below the header table
    -- (level 33 of the document). One jsonpath scan: under a microsecond.
    ADD CONSTRAINT outbox_headers_depth CHECK (published_at IS NOT NULL OR dead_at IS NOT NULL
        OR headers = '{}'
        OR NOT jsonb_path_exists(headers, 'strict $.**{33 to last} ? (@.type() == "object" || @.type() == "array")')),
    -- A number the relay would turn into an infinite double (about a
    -- microsecond).
    ADD CONSTRAINT outbox_headers_number CHECK (published_at IS NOT NULL OR dead_at IS NOT NULL
        OR headers = '{}' OR NOT outbox_headers_amqp_number_over(headers)),
    -- The encoded header table within outbox.MaxHeaderTableBytes: frame_max
    -- 131,072 less the content header frame's other contents and 1 KiB of
    -- slack. A relay that negotiates a smaller frame_max parks what does
    -- not fit it.
    ADD CONSTRAINT outbox_headers_size CHECK (published_at IS NOT NULL OR dead_at IS NOT NULL
        OR octet_length(headers::text) <= 25944 OR outbox_headers_amqp_size(headers) <= 129724);

-- +goose Down
-- Rows parked by the Up stay dead: nothing tells them from rows the relay
-- parked, and they could never be published anyway.
ALTER TABLE outbox
    DROP CONSTRAINT IF EXISTS outbox_exchange_len,
    DROP CONSTRAINT IF EXISTS outbox_routing_key_len,
    DROP CONSTRAINT IF EXISTS outbox_content_type_len,
    DROP CONSTRAINT IF EXISTS outbox_exchange_chars,
    DROP CONSTRAINT IF EXISTS outbox_routing_key_chars,
    DROP CONSTRAINT IF EXISTS outbox_content_type_chars,
    DROP CONSTRAINT IF EXISTS outbox_header_name_len,
    DROP CONSTRAINT IF EXISTS outbox_headers_width,
    DROP CONSTRAINT IF EXISTS outbox_headers_depth,
    DROP CONSTRAINT IF EXISTS outbox_headers_number,
    DROP CONSTRAINT IF EXISTS outbox_headers_size;
DROP FUNCTION IF EXISTS outbox_headers_amqp_number_over(jsonb);
DROP FUNCTION IF EXISTS outbox_headers_amqp_name_max(jsonb);
DROP FUNCTION IF EXISTS outbox_headers_amqp_width(jsonb);
DROP FUNCTION IF EXISTS outbox_headers_amqp_size(jsonb);
