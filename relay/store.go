package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// keyHead is the part of claimBatch that sizes and locks one ordering key
// h.k: it counts the key's first unpublished rows in id order (dead ones
// too under the block policy, $3), up to %[1]s, and locks the first of them,
// the key's head, with SKIP LOCKED, provided it is due and not dead. When
// another relay holds the head, that relay is publishing the key, and when
// the head is dead or waiting for a retry, nothing of the key can go:
// either way the key counts for nothing (n = 0, head NULL).
//
// The range `ordering_key >= h.k AND ordering_key <= h.k` is equality
// written so that only outbox_key_unpublished_idx (ordering_key, id) can
// serve ORDER BY ordering_key, id without a sort: with `=`, the planner may
// prefer the primary key filtered by key, which reads every row of the
// backlog up to the key's rows when a key is rare.
const keyHead = `
        SELECT l.id AS head, CASE WHEN l.id IS NULL THEN 0 ELSE c.n END AS n, %[1]s AS lim
        FROM (SELECT min(y.id) AS first, count(*) AS n
              FROM (SELECT o.id FROM outbox o
                    WHERE o.ordering_key >= h.k AND o.ordering_key <= h.k AND o.published_at IS NULL
                      AND (o.dead_at IS NULL OR $3)
                    ORDER BY o.ordering_key, o.id LIMIT %[1]s) y) c
        LEFT JOIN LATERAL (SELECT l.id FROM outbox l
                           WHERE l.id = c.first AND l.published_at IS NULL AND l.dead_at IS NULL
                             AND l.available_at <= now()
                           FOR UPDATE SKIP LOCKED) l ON true`

// The first key's run may take $4 rows; the next ones what is left of the
// batch, so the keyed part of a batch never exceeds $1 rows.
var (
	firstHead = fmt.Sprintf(keyHead, "least($4::bigint, $1::bigint)")
	nextHead  = fmt.Sprintf(keyHead, "least($4::bigint, $1::bigint - keys.total)")
)

// claimBatch takes one batch in one statement, from two sources that never
// read each other's backlog:
//
// Keyed rows (CTE keys, keyed). A loose index scan over
// outbox_key_unpublished_idx visits the keys that have unpublished rows,
// one index probe per key, starting after $2 (the last key the worker
// visited, so keys take turns and a hot key cannot starve the others;
// wrapping to the first key when none is after it), sizes each key's run
// and locks its head (keyHead), until the runs add up to $1 rows. Then, for
// each key whose head it holds, it reads and locks the run itself: the
// key's unpublished rows from the head on, in id order, with ok saying
// whether each is due and not dead. The worker publishes a run up to its
// first row that is not ok, so a run is always a prefix of the key's
// queue. This lock waits instead of skipping: holding the head, no relay
// can hold a later row of the key, so only an operator's statement could
// make it wait, briefly, and skipping a row would let the next one
// overtake it. Its cost is proportional to the keys visited and the rows
// taken, not to the backlog: a key with 50,000 pending rows costs one
// probe and two 500-entry index ranges.
//
// Unkeyed rows (CTE unkeyed): the oldest due rows from
// outbox_pending_unkeyed_idx, in id order from $5 (see worker.low), SKIP
// LOCKED. They fill the batch to $6 rows, and always get at least half of
// it, so a deep keyed backlog never starves them (nor they it).
//
// Payloads and headers: the claim brings a row's payload and headers only
// when the row is within its share of the batch's byte budget (inlineRow:
// $8 max_batch_bytes / $6 rows, payload within $7 max_payload_bytes; the
// headers counted as the text the relay receives, rowExtra), so the claim
// alone never loads more than the budget; octet_length of the payload
// reads the stored size without detoasting, so a large payload costs its
// size in the database, never in the relay's memory. The worker then
// loads the larger rows that fit what is left of the budget
// (loadPayloads), in one more round trip only when there are some. (A
// running sum over the batch would say the same in SQL, but a window over
// the locked rows costs about half a millisecond per batch.)
//
// Plan (PostgreSQL 15, EXPLAIN (ANALYZE, BUFFERS) under enable_bitmapscan
// = off, see claimTx; 50,000 pending rows over 20 keys, just analyzed, not
// vacuumed; a batch of 500; TestClaimReadsKeysAndBatchNotBacklog in
// store_test.go checks the rows read on every run):
//
//	Sort (actual time=2.16..2.19 rows=500)                   Buffers: shared hit=823
//	  CTE keys
//	    -> Recursive Union (rows=1)
//	         -> Limit -> Append -> Limit
//	              -> Index Only Scan using outbox_key_unpublished_idx on outbox p (rows=1)
//	                   Index Cond: (ordering_key > '')
//	         -> Aggregate -> Limit (rows=500)
//	              -> Index Only Scan using outbox_key_unpublished_idx on outbox o (rows=500)
//	                   Index Cond: ((ordering_key >= p.ordering_key) AND (ordering_key <= p.ordering_key))
//	         -> LockRows -> Index Scan using outbox_pkey on outbox l (rows=1): the head
//	         -> WorkTable Scan on keys (rows=0): Filter: (total < 500), the batch is full
//	  CTE keyed
//	    -> Nested Loop (rows=500)
//	         -> CTE Scan on keys (rows=1)
//	         -> Limit -> LockRows (rows=500)
//	              -> Index Scan using outbox_key_unpublished_idx on outbox o_2 (rows=500)
//	                   Index Cond: ((ordering_key >= k) AND (ordering_key <= k) AND (id >= head))
//	  CTE unkeyed
//	    -> Limit -> LockRows -> Index Scan using outbox_pending_unkeyed_idx (rows=0)
//	  -> Result -> Append
//	Execution Time: 2.5-3.8 ms over several runs (an unkeyed claim of 500
//	rows, claimUnkeyed: 1.2-1.7 ms)
//
// The 50,000-row backlog is never read: one probe per key visited and two
// ranges of 500 index entries for the run.
// The previous claim (a scan of every pending row in id order, keeping
// heads only) read all 50,000 rows with a sub-plan each for 20 heads: 464 ms.
var claimBatch = `
WITH RECURSIVE keys(k, head, lim, total) AS (
    SELECT h.k, r.head, r.lim, r.n
    FROM (SELECT f.k FROM (
            (SELECT p.ordering_key AS k FROM outbox p
             WHERE p.published_at IS NULL AND p.ordering_key > $2
             ORDER BY p.ordering_key LIMIT 1)
            UNION ALL
            (SELECT p.ordering_key FROM outbox p
             WHERE p.published_at IS NULL AND p.ordering_key IS NOT NULL
             ORDER BY p.ordering_key LIMIT 1)) f
          LIMIT 1) h
    CROSS JOIN LATERAL (` + firstHead + `) r
  UNION ALL
    SELECT h.k, r.head, r.lim, keys.total + r.n
    FROM keys
    CROSS JOIN LATERAL (SELECT p.ordering_key AS k FROM outbox p
          WHERE p.published_at IS NULL AND p.ordering_key > keys.k
          ORDER BY p.ordering_key LIMIT 1) h
    CROSS JOIN LATERAL (` + nextHead + `) r
    WHERE keys.total < $1
),
keyed AS (
    SELECT r.* FROM keys CROSS JOIN LATERAL (
        SELECT o.id, keys.head, o.dead_at IS NULL AND o.available_at <= now() AS ok,
               o.message_id, o.exchange, o.routing_key, o.payload, o.content_type, o.headers,
               o.created_at, o.attempts, o.ordering_key, o.suspected,
               o.type, o.correlation_id, o.reply_to, o.expiration, o.priority, o.app_id
        FROM outbox o
        WHERE o.ordering_key >= keys.k AND o.ordering_key <= keys.k AND o.published_at IS NULL
          AND (o.dead_at IS NULL OR $3) AND o.id >= keys.head
        ORDER BY o.ordering_key, o.id LIMIT keys.lim
        FOR UPDATE) r
    WHERE keys.head IS NOT NULL
),
unkeyed AS (
    SELECT o.id, 0::bigint AS head, true AS ok,
           o.message_id, o.exchange, o.routing_key, o.payload, o.content_type, o.headers,
           o.created_at, o.attempts, o.ordering_key, o.suspected,
           o.type, o.correlation_id, o.reply_to, o.expiration, o.priority, o.app_id
    FROM outbox o
    WHERE o.ordering_key IS NULL AND o.published_at IS NULL AND o.dead_at IS NULL
      AND o.available_at <= now() AND o.id >= $5
    ORDER BY o.id
    LIMIT greatest($6 - (SELECT count(*) FROM keyed), $6 / 2)
    FOR UPDATE SKIP LOCKED
),
claimed AS (
    SELECT * FROM keyed UNION ALL SELECT * FROM unkeyed
)
SELECT c.id, c.head, c.ok, c.message_id::text, c.exchange, c.routing_key,
       CASE WHEN ` + inlineRow + ` THEN c.payload END,
       octet_length(c.payload), c.content_type,
       CASE WHEN ` + inlineRow + ` THEN c.headers END, c.created_at, c.attempts,
       coalesce(c.ordering_key, ''), c.suspected,
       coalesce(c.type, ''), coalesce(c.correlation_id, ''), coalesce(c.reply_to, ''),
       coalesce(c.expiration, ''), coalesce(c.priority, 0), coalesce(c.app_id, ''), x.extra
FROM claimed c CROSS JOIN LATERAL (SELECT ` + rowExtra + ` AS extra) x
ORDER BY c.id`

// claimUnkeyed is the claim while no ordering key has unpublished rows
// (see keysProbe): claimBatch's unkeyed half alone, as a plain statement.
// The keyed half costs little to run when there are no keys, but its shape
// (a recursive CTE, two locking CTEs, a union) costs PostgreSQL about a
// millisecond per batch to plan and materialise, which an unkeyed drain
// would pay for nothing. $1 rows from id $2; payloads as in claimBatch ($3
// max_payload_bytes, $4 max_batch_bytes).
var claimUnkeyed = `
SELECT c.id, 0::bigint, true, c.message_id::text, c.exchange, c.routing_key,
       CASE WHEN ` + strings.NewReplacer("$7", "$3", "$8", "$4", "$6", "$1").Replace(inlineRow) + ` THEN c.payload END,
       octet_length(c.payload), c.content_type,
       CASE WHEN ` + strings.NewReplacer("$7", "$3", "$8", "$4", "$6", "$1").Replace(inlineRow) + ` THEN c.headers END,
       c.created_at, c.attempts, '', c.suspected,
       coalesce(c.type, ''), coalesce(c.correlation_id, ''), coalesce(c.reply_to, ''),
       coalesce(c.expiration, ''), coalesce(c.priority, 0), coalesce(c.app_id, ''), x.extra
FROM (SELECT o.* FROM outbox o
      WHERE o.ordering_key IS NULL AND o.published_at IS NULL AND o.dead_at IS NULL
        AND o.available_at <= now() AND o.id >= $2
      ORDER BY o.id
      LIMIT $1
      FOR UPDATE SKIP LOCKED) c
CROSS JOIN LATERAL (SELECT ` + rowExtra + ` AS extra) x
ORDER BY c.id`

// rowExtra is what a claimed row c brings besides its payload, in bytes
// as the relay receives them: the headers' jsonb text (control
// characters come back as six-byte \uXXXX escapes, numbers with every
// digit: the stored size says nothing of it), the ordering key and the
// short strings. It counts against max_batch_bytes like the payload, so
// headers and keys cannot grow a batch past its budget either.
const rowExtra = `octet_length(c.headers::text) + octet_length(c.exchange) + octet_length(c.routing_key)
           + octet_length(c.content_type) + coalesce(octet_length(c.ordering_key), 0)
           + coalesce(octet_length(c.type), 0) + coalesce(octet_length(c.correlation_id), 0)
           + coalesce(octet_length(c.reply_to), 0) + coalesce(octet_length(c.expiration), 0)
           + coalesce(octet_length(c.app_id), 0)`

// inlineRow says whether the claim brings row c's payload and headers
// with it: when the payload is within max_payload_bytes ($7) and the row
// (payload and rowExtra) within its share of the batch's byte budget
// ($8 max_batch_bytes / $6 rows). The others are loaded by loadPayloads
// while the budget allows.
const inlineRow = `(octet_length(c.payload) <= $7::bigint
                 AND octet_length(c.payload)::bigint + x.extra <= $8::bigint / $6)`

// fetchPayloads loads the payloads and headers a claim left out for their
// size (see loadPayloads).
const fetchPayloads = `SELECT id, payload, headers FROM outbox WHERE id = ANY($1)`

// keysProbe says whether any ordering key has unpublished rows: one entry
// of outbox_key_unpublished_idx. It runs after every claim, in the same
// round trip, and decides which claim the worker sends next.
const keysProbe = `SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL AND ordering_key IS NOT NULL)`

// claimTx begins a batch's transaction. Bitmap scans are off for it: for a
// key with a few thousand pending rows the planner would otherwise read
// all of them through a bitmap and sort them to take the first 500, where
// the ordered index scan reads 501 (see claimBatch). The lock timeout
// bounds the one wait the claim may have (a run's row locked by an
// operator's statement): past it the batch is abandoned and retried.
var claimTx = pgx.TxOptions{BeginQuery: "BEGIN; SET LOCAL enable_bitmapscan = off; SET LOCAL lock_timeout = '5s'"}

// markPublished and markFailed run together in one pgx.Batch: one round
// trip per batch, whatever its size. published_at is the time of the mark,
// after the confirms (not now(), the claim's start).
const markPublished = `UPDATE outbox SET published_at = statement_timestamp() WHERE id = ANY($1)`

// deletePublishedRows is markPublished under DeletePublished (retention:
// none): the row goes in the transaction that records its confirm. It
// writes a delete mark on the row version the claim locked, and nothing
// else: no new version, no index entry (markPublished, being on a column
// the pending indexes' predicates name, can never be a HOT update).
const deletePublishedRows = `DELETE FROM outbox WHERE id = ANY($1)`

// markFailed charges each failed row an attempt. It cannot fail for a
// row's data: attempts (which a row may hold at any int, negative or the
// maximum, written by the table's owner or by an older relay) is read as
// at least 0 and at most $5 - 1 before the + 1, so the sum never
// overflows and a row with negative attempts still dies after $5; the
// delay is a float8 times an interval (an operator pg_catalog has with
// exactly these types); unnest is pg_catalog's. A row whose mark fails
// anyway is isolated by mark (markIsolated).
const markFailed = `
UPDATE outbox o SET
    attempts     = least(greatest(o.attempts, 0), $5::int - 1) + 1,
    last_error   = f.err,
    available_at = now() + f.delay_ms::float8 * interval '1 millisecond',
    dead_at      = CASE WHEN f.permanent OR greatest(o.attempts, 0) >= $5::int - 1 THEN now() END
FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::bigint[]), pg_catalog.unnest($4::bool[])) AS f(id, err, delay_ms, permanent)
WHERE o.id = f.id
RETURNING o.id, o.dead_at IS NOT NULL`

// markDeferred notes why rows the broker took none of (every message of
// their send nacked) wait, and makes them wait out a retry delay, without
// charging an attempt: the broker's unavailability is not the rows' fault.
// Exact types and pg_catalog's unnest, as in markFailed: a bigint times an
// interval, or unnest of a bigint[], would pick a look-alike planted on
// the search_path over pg_catalog's.
const markDeferred = `
UPDATE outbox o SET
    last_error   = f.err,
    available_at = now() + f.delay_ms::float8 * interval '1 millisecond'
FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::bigint[])) AS f(id, err, delay_ms)
WHERE o.id = f.id`

// markDeadAlone parks one row whose mark failed for its own data (see
// mark): it writes nothing of the row's but dead_at and the error's
// SQLSTATE, which no constraint refuses (dead rows are exempt from the
// row limits).
const markDeadAlone = `
UPDATE outbox SET dead_at = now(), last_error = $2
WHERE id = $1 AND published_at IS NULL
RETURNING id`

// markSuspected flags rows that were in flight, unconfirmed, when the
// broker connection died under a batch: any of them may have killed it.
// They are not charged an attempt; the next claims publish them alone.
const markSuspected = `UPDATE outbox SET suspected = true WHERE id = ANY($1) AND NOT suspected`

type claimed struct {
	id          int64
	head        int64 // the id of its key's head (the run starts there); 0 without a key
	ok          bool  // due and not dead: a run is published up to its first row that is not ok
	messageID   string
	exchange    string
	routingKey  string
	payload     []byte // nil until loaded; stays nil when too large or over the batch's byte budget
	size        int    // octet_length(payload)
	extra       int64  // the other bytes the relay receives for it (rowExtra), headers included
	contentType string
	headers     []byte // the jsonb text; nil until loaded with the payload
	createdAt   time.Time
	attempts    int
	key         string // ordering key, "" without one
	suspected   bool
	props       rowProps
}

// rowProps are a row's optional AMQP properties as the claim reads them:
// NULL as "" and 0, priority as the smallint column holds it (the relay
// checks its range before it narrows it to an octet).
type rowProps struct {
	orderingKey                                    string // checked with them (amqpProperties)
	typ, correlationID, replyTo, expiration, appID string
	priority                                       int16
}

// claimArgs are claimBatch's parameters.
type claimArgs struct {
	keyedRows   int    // $1: stop visiting keys once runs add up to this
	afterKey    string // $2: visit keys after this one
	blockOnDead bool   // $3
	runMax      int    // $4: rows per key run
	fromID      int64  // $5: unkeyed rows from this id
	batchRows   int    // $6
	maxPayload  int    // $7
	maxBytes    int64  // $8

	// unkeyedOnly sends claimUnkeyed instead of claimBatch (no key had
	// unpublished rows at the last probe).
	unkeyedOnly bool
}

// claim takes a batch and probes for keys, in one round trip. keys reports
// whether any ordering key has unpublished rows after the claim.
func claim(ctx context.Context, tx pgx.Tx, a claimArgs) (out []claimed, keys bool, _ error) {
	b := &pgx.Batch{}
	collect := func(rows pgx.Rows) error {
		var cerr error
		out, cerr = pgx.CollectRows(rows, func(row pgx.CollectableRow) (claimed, error) {
			var c claimed
			err := row.Scan(&c.id, &c.head, &c.ok, &c.messageID, &c.exchange, &c.routingKey, &c.payload, &c.size,
				&c.contentType, &c.headers, &c.createdAt, &c.attempts, &c.key, &c.suspected,
				&c.props.typ, &c.props.correlationID, &c.props.replyTo, &c.props.expiration, &c.props.priority, &c.props.appID,
				&c.extra)
			c.props.orderingKey = c.key
			if err == nil && c.headers != nil && c.payload == nil {
				c.payload = []byte{} // brought inline, and empty (headers are never NULL)
			}
			return c, err
		})
		return cerr
	}
	if a.unkeyedOnly {
		b.Queue(claimUnkeyed, a.batchRows, a.fromID, a.maxPayload, a.maxBytes).Query(collect)
	} else {
		b.Queue(claimBatch, a.keyedRows, a.afterKey, a.blockOnDead, a.runMax,
			a.fromID, a.batchRows, a.maxPayload, a.maxBytes).Query(collect)
	}
	b.Queue(keysProbe).QueryRow(func(row pgx.Row) error { return row.Scan(&keys) })
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, false, fmt.Errorf("claim: %w", err)
	}
	return out, keys, nil
}

// loadPayloads completes a claim: it loads, in one round trip, the
// payloads and headers the claim left out, for the rows whose payload is
// within maxPayload, in batch order, while the batch's bytes (payloads and
// each row's extra) stay within maxBytes. It stops at the first that does
// not fit; the worker publishes the batch up to that row. The first row
// to load is loaded even alone over maxBytes (its payload is within
// maxPayload <= maxBytes, its headers within the table's 256 KiB): a
// batch always makes progress.
func loadPayloads(ctx context.Context, tx pgx.Tx, rows []claimed, maxPayload int, maxBytes int64) error {
	var used int64
	for i := range rows {
		if rows[i].payload != nil {
			used += int64(len(rows[i].payload)) + rows[i].extra
		}
	}
	var ids []int64
	at := map[int64]int{}
	for i := range rows {
		r := &rows[i]
		if r.payload != nil || r.size > maxPayload {
			continue
		}
		need := int64(r.size) + r.extra
		if used+need > maxBytes && used > 0 {
			break
		}
		used += need
		ids = append(ids, r.id)
		at[r.id] = i
	}
	if len(ids) == 0 {
		cutToBudget(rows, maxBytes)
		return nil
	}
	got, err := tx.Query(ctx, fetchPayloads, ids)
	if err != nil {
		return fmt.Errorf("load payloads: %w", err)
	}
	var id int64
	var payload, headers []byte
	_, err = pgx.ForEachRow(got, []any{&id, &payload, &headers}, func() error {
		r := &rows[at[id]]
		r.payload, r.headers = payload, headers
		if r.payload == nil {
			r.payload = []byte{}
		}
		payload, headers = nil, nil
		return nil
	})
	if err != nil {
		return fmt.Errorf("load payloads: %w", err)
	}
	cutToBudget(rows, maxBytes)
	return nil
}

// cutToBudget ends the batch, once its rows are loaded, at the first row
// whose headers would take it past maxBytes once decoded: that row and
// the rest drop what was loaded for them and wait for the next batch, as
// rows past loadPayloads' budget do. The first loaded row always stays.
//
// The claim and loadPayloads count a row's headers as their jsonb text,
// what the relay receives; the tree it decodes to, which the relay holds
// until the batch ends, is not bounded by the text's length: "{}, " is 4
// bytes of text and a Go map of about 64 bytes, {"a": null} 11 bytes and
// about 350 (a map's first group). A batch of 16 MiB of such text held
// 270 MiB of maps. Counting the text once more and its tree
// (headerTreeWeight) makes the batch's memory follow max_batch_bytes
// whatever the headers hold.
func cutToBudget(rows []claimed, maxBytes int64) {
	var used int64
	for i := range rows {
		r := &rows[i]
		if r.payload == nil {
			continue // not loaded: costs nothing
		}
		need := int64(len(r.payload)) + r.extra + headerTreeWeight(r.headers)
		if used > 0 && used+need > maxBytes {
			for j := i; j < len(rows); j++ {
				rows[j].payload, rows[j].headers = nil, nil
			}
			return
		}
		used += need
	}
}

// headerTreeWeight bounds, in bytes, what headers' JSON text costs the
// relay once decoded (outbox.DecodeRowHeaders), with the text itself: the
// text's bytes, 48 per structural character ({ [ , :, at least one for
// every node) and 320 more per table. Against the live heap of decoding
// the worst shapes the row limits accept (worstHeaders in
// test/memory_e2e_test.go: empty and one-entry tables, empty arrays,
// members, nulls, numbers, strings, control characters) it is 1.3 to 6
// times what they hold; for ordinary headers (a traceparent, a tenant)
// under a kilobyte.
func headerTreeWeight(text []byte) int64 {
	if len(text) <= 2 { // "{}" or none
		return int64(len(text))
	}
	tables := bytes.Count(text, []byte("{"))
	nodes := tables + bytes.Count(text, []byte("[")) + bytes.Count(text, []byte(",")) + bytes.Count(text, []byte(":"))
	return int64(len(text)) + 48*int64(nodes) + 320*int64(tables)
}

// failure is one row's failed attempt, for mark.
type failure struct {
	id        int64
	err       string
	delayMS   int64
	permanent bool // dead at once: the row can never be published
}

// mark records the batch's outcomes and returns the ids of the rows that
// went dead.
//
// A database error caused by one row's data (classified once, by
// rowDataError: a data exception or an integrity violation, say a
// constraint an operator added that the row's new attempt breaks) must not
// roll back the batch: its confirmed rows would be published again on
// every retry, for ever. The marks run after a savepoint, in the same
// round trip; on such an error mark rolls back to it and marks again
// (markIsolated): the published and suspected rows together, each failed
// row alone under a savepoint of its own, and a failed row whose own mark
// is refused is parked dead with the error. Any other error (connection,
// lock timeout, permissions) ends the batch as before.
func mark(ctx context.Context, tx pgx.Tx, m marks, maxAttempts int) ([]int64, error) {
	if len(m.published) == 0 && len(m.failures) == 0 && len(m.suspected) == 0 && len(m.deferred) == 0 {
		return nil, nil
	}
	b := &pgx.Batch{}
	b.Queue("SAVEPOINT relay_mark")
	dead := queueMarks(b, m, maxAttempts)
	err := tx.SendBatch(ctx, b).Close()
	if err == nil {
		return *dead, nil
	}
	if !rowDataError(err) {
		return nil, fmt.Errorf("mark: %w", err)
	}
	if _, rerr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT relay_mark"); rerr != nil {
		return nil, fmt.Errorf("mark: %w (then rolling back to the savepoint: %v)", err, rerr)
	}
	return markIsolated(ctx, tx, m, maxAttempts)
}

// queueMarks queues the marks on b and returns where the ids of the rows
// that went dead will be, once b ran.
func queueMarks(b *pgx.Batch, m marks, maxAttempts int) *[]int64 {
	dead := new([]int64)
	if len(m.published) > 0 {
		if m.deletePublished {
			b.Queue(deletePublishedRows, m.published)
		} else {
			b.Queue(markPublished, m.published)
		}
	}
	if len(m.suspected) > 0 {
		b.Queue(markSuspected, m.suspected)
	}
	if len(m.deferred) > 0 {
		ids, errs, delays, _ := failureColumns(m.deferred)
		b.Queue(markDeferred, ids, errs, delays)
	}
	if len(m.failures) > 0 {
		ids, errs, delays, perm := failureColumns(m.failures)
		b.Queue(markFailed, ids, errs, delays, perm, maxAttempts).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var id int64
				var isDead bool
				if err := rows.Scan(&id, &isDead); err != nil {
					return err
				}
				if isDead {
					*dead = append(*dead, id)
				}
			}
			return rows.Err()
		})
	}
	return dead
}

// markIsolated is mark after a row's data made the batch's marks fail:
// one round trip for the published, suspected and deferred rows (their
// marks write only the relay's flags and its own error text), then one per
// failed row, each under a savepoint.
// It costs round trips per failed row, but only in a batch that held such
// a row.
func markIsolated(ctx context.Context, tx pgx.Tx, m marks, maxAttempts int) ([]int64, error) {
	b := &pgx.Batch{}
	flags := m
	flags.failures = nil
	queueMarks(b, flags, maxAttempts)
	if b.Len() > 0 {
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return nil, fmt.Errorf("mark published: %w", err)
		}
	}
	var dead []int64
	for _, f := range m.failures {
		b := &pgx.Batch{}
		b.Queue("SAVEPOINT relay_mark_row")
		d := queueMarks(b, marks{failures: []failure{f}}, maxAttempts)
		err := tx.SendBatch(ctx, b).Close()
		if err == nil {
			dead = append(dead, *d...)
			continue
		}
		if !rowDataError(err) {
			return nil, fmt.Errorf("mark row %d: %w", f.id, err)
		}
		var pg *pgconn.PgError
		errors.As(err, &pg)
		// The SQLSTATE and PostgreSQL's message only: the row's own text
		// (in f.err) may be what was refused.
		why := fmt.Sprintf("mark_refused: the database refused this row's mark (SQLSTATE %s: %s)", pg.Code, pg.Message)
		// Alone, not in a batch: a batch's statements are prepared first,
		// which an aborted transaction refuses.
		if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT relay_mark_row"); err != nil {
			return nil, fmt.Errorf("mark row %d: roll back to its savepoint: %w", f.id, err)
		}
		if _, err := tx.Exec(ctx, markDeadAlone, f.id, why); err != nil {
			if !rowDataError(err) {
				return nil, fmt.Errorf("park row %d: %w", f.id, err)
			}
			// Refused too: leave the row as it was; the rest commits.
			if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT relay_mark_row"); err != nil {
				return nil, fmt.Errorf("park row %d: roll back to its savepoint: %w", f.id, err)
			}
			continue
		}
		dead = append(dead, f.id)
	}
	return dead, nil
}

// failureColumns turns failures into the arrays markFailed and
// markDeferred unnest.
func failureColumns(fs []failure) (ids []int64, errs []string, delays []int64, perm []bool) {
	ids, errs, delays, perm = make([]int64, len(fs)), make([]string, len(fs)), make([]int64, len(fs)), make([]bool, len(fs))
	for i, f := range fs {
		ids[i], errs[i], delays[i], perm[i] = f.id, f.err, f.delayMS, f.permanent
	}
	return ids, errs, delays, perm
}

// rowDataError reports whether err is PostgreSQL refusing a statement for
// the data it was given: SQLSTATE class 22 (data exception: out of range,
// invalid text) or 23 (integrity constraint violation). For a mark, that
// data is a row's (its attempts, its error text): retrying the batch would
// fail the same way. This is the classification; mark acts on it.
func rowDataError(err error) bool {
	var pg *pgconn.PgError
	if !errors.As(err, &pg) || len(pg.Code) != 5 {
		return false
	}
	return pg.Code[:2] == "22" || pg.Code[:2] == "23"
}
