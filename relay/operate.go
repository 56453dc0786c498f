package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what the operator functions need: a pool, a connection or a
// transaction.
type DB interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Status summarises the outbox for operators.
type Status struct {
	Pending int64 // neither published nor dead
	Due     int64 // pending, available now, and not held
	// Held rows are available now but wait for an earlier row of their
	// ordering key: HeldByPending behind a pending one, HeldByDead behind
	// a dead one only (held under ordering_policy block; under skip the
	// relay publishes them, so they are due).
	HeldByPending, HeldByDead int64
	Dead                      int64         // parked
	Failing                   int64         // pending after a failed attempt (attempts > 0): waiting for a retry
	OldestPendingAge          time.Duration // age of the oldest pending row, 0 if none
	BlockedKeys               int64         // ordering keys with a dead row
	DeadTuples                int64         // dead tuples in the table, per pg_stat_user_tables
	TableBytes                int64         // pg_total_relation_size
	ByExchange                []ExchangeStatus
}

// ExchangeStatus is Status for one exchange ("" is the default exchange).
type ExchangeStatus struct {
	Exchange         string
	Pending, Due     int64
	HeldByPending    int64
	HeldByDead       int64
	Dead, Failing    int64
	OldestPendingAge time.Duration
}

// Each query is served by partial indexes (pending rows without a key,
// unpublished keyed rows, dead rows), so a large table of published rows
// is never scanned.
const (
	// A keyed row is held when an earlier row of its key is unpublished:
	// pending (the relay publishes a key in id order) or dead (under
	// ordering_policy block). heads finds each key's first pending and
	// first dead id in one walk of outbox_key_unpublished_idx.
	statusPending = `
SELECT exchange, count(*),
       count(*) FILTER (WHERE available_at <= now() AND NOT behind_pending AND NOT behind_dead),
       count(*) FILTER (WHERE available_at <= now() AND behind_pending),
       count(*) FILTER (WHERE available_at <= now() AND NOT behind_pending AND behind_dead),
       count(*) FILTER (WHERE attempts > 0),
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
FROM (SELECT exchange, available_at, created_at, attempts, false AS behind_pending, false AS behind_dead FROM outbox
      WHERE published_at IS NULL AND dead_at IS NULL AND ordering_key IS NULL
      UNION ALL
      SELECT o.exchange, o.available_at, o.created_at, o.attempts, o.id > h.first_pending, coalesce(o.id > h.first_dead, false)
      FROM outbox o
      JOIN (SELECT ordering_key, min(id) FILTER (WHERE dead_at IS NULL) AS first_pending,
                   min(id) FILTER (WHERE dead_at IS NOT NULL) AS first_dead
            FROM outbox WHERE published_at IS NULL AND ordering_key IS NOT NULL
            GROUP BY ordering_key) h ON h.ordering_key = o.ordering_key
      WHERE o.published_at IS NULL AND o.dead_at IS NULL AND o.ordering_key IS NOT NULL) p
GROUP BY exchange`
	statusDead  = `SELECT exchange, count(*) FROM outbox WHERE dead_at IS NOT NULL GROUP BY exchange`
	statusTable = `
SELECT (SELECT count(DISTINCT ordering_key) FROM outbox WHERE dead_at IS NOT NULL AND ordering_key IS NOT NULL),
       coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'outbox'::regclass), 0),
       pg_total_relation_size('outbox'::regclass)`
)

// ReadStatus counts pending, due, held and dead rows, overall and per
// exchange. Due and held follow ordering_policy block; Skip gives them
// under skip.
func ReadStatus(ctx context.Context, db DB) (Status, error) {
	per := map[string]*ExchangeStatus{}
	get := func(ex string) *ExchangeStatus {
		if per[ex] == nil {
			per[ex] = &ExchangeStatus{Exchange: ex}
		}
		return per[ex]
	}
	rows, err := db.Query(ctx, statusPending)
	if err != nil {
		return Status{}, fmt.Errorf("status: %w", err)
	}
	var ex string
	var pending, due, byPending, byDead, failing int64
	var age float64
	_, err = pgx.ForEachRow(rows, []any{&ex, &pending, &due, &byPending, &byDead, &failing, &age}, func() error {
		s := get(ex)
		s.Pending, s.Due, s.Failing, s.OldestPendingAge = pending, due, failing, time.Duration(age*float64(time.Second))
		s.HeldByPending, s.HeldByDead = byPending, byDead
		return nil
	})
	if err != nil {
		return Status{}, fmt.Errorf("status: %w", err)
	}
	rows, err = db.Query(ctx, statusDead)
	if err != nil {
		return Status{}, fmt.Errorf("status: %w", err)
	}
	var dead int64
	_, err = pgx.ForEachRow(rows, []any{&ex, &dead}, func() error {
		get(ex).Dead = dead
		return nil
	})
	if err != nil {
		return Status{}, fmt.Errorf("status: %w", err)
	}
	var st Status
	rows, err = db.Query(ctx, statusTable)
	if err != nil {
		return Status{}, fmt.Errorf("status: %w", err)
	}
	_, err = pgx.ForEachRow(rows, []any{&st.BlockedKeys, &st.DeadTuples, &st.TableBytes}, func() error { return nil })
	if err != nil {
		return Status{}, fmt.Errorf("status: %w", err)
	}
	for _, s := range per {
		st.ByExchange = append(st.ByExchange, *s)
		st.Pending += s.Pending
		st.Due += s.Due
		st.HeldByPending += s.HeldByPending
		st.HeldByDead += s.HeldByDead
		st.Dead += s.Dead
		st.Failing += s.Failing
		st.OldestPendingAge = max(st.OldestPendingAge, s.OldestPendingAge)
	}
	sort.Slice(st.ByExchange, func(i, j int) bool { return st.ByExchange[i].Exchange < st.ByExchange[j].Exchange })
	return st, nil
}

// Skip returns s as ordering_policy skip sees it: rows held only by a
// dead row of their key are due.
func (s Status) Skip() Status {
	s.Due, s.HeldByDead = s.Due+s.HeldByDead, 0
	s.ByExchange = slices.Clone(s.ByExchange)
	for i := range s.ByExchange {
		e := &s.ByExchange[i]
		e.Due, e.HeldByDead = e.Due+e.HeldByDead, 0
	}
	return s
}

// FailingRow is a pending row whose last attempt failed: it waits for its
// next attempt (NextAttempt, its available_at) and is not dead yet.
type FailingRow struct {
	ID          int64
	MessageID   string
	Exchange    string
	RoutingKey  string
	OrderingKey string
	Attempts    int
	LastError   string
	NextAttempt time.Time
}

// listFailing reads the two pending partial indexes (unkeyed, and keyed
// unpublished), so it costs the backlog, never the published rows.
const listFailing = `
SELECT id, message_id::text, exchange, routing_key, coalesce(ordering_key, ''), attempts,
       coalesce(last_error, ''), available_at
FROM (SELECT * FROM outbox WHERE published_at IS NULL AND dead_at IS NULL AND ordering_key IS NULL AND attempts > 0
      UNION ALL
      SELECT * FROM outbox WHERE published_at IS NULL AND dead_at IS NULL AND ordering_key IS NOT NULL AND attempts > 0) f
ORDER BY id
LIMIT $1`

// ListFailing returns up to limit failing rows, oldest first. A row is
// listed from its first failed attempt on, with the reason and when the
// next attempt is due.
func ListFailing(ctx context.Context, db DB, limit int) ([]FailingRow, error) {
	rows, err := db.Query(ctx, listFailing, limit)
	if err != nil {
		return nil, fmt.Errorf("failing rows: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (FailingRow, error) {
		var f FailingRow
		err := r.Scan(&f.ID, &f.MessageID, &f.Exchange, &f.RoutingKey, &f.OrderingKey, &f.Attempts, &f.LastError, &f.NextAttempt)
		return f, err
	})
	if err != nil {
		return nil, fmt.Errorf("failing rows: %w", err)
	}
	return out, nil
}

// DeadRow is a parked row, for operators.
type DeadRow struct {
	ID         int64
	MessageID  string
	Exchange   string
	RoutingKey string
	Attempts   int
	LastError  string
	CreatedAt  time.Time
	DeadAt     time.Time
}

const listDead = `
SELECT id, message_id::text, exchange, routing_key, attempts, coalesce(last_error, ''), created_at, dead_at
FROM outbox WHERE dead_at IS NOT NULL
ORDER BY id
LIMIT $1`

// ListDead returns up to limit dead rows, oldest first.
func ListDead(ctx context.Context, db DB, limit int) ([]DeadRow, error) {
	return queryDead(ctx, db, "list dead", listDead, limit)
}

// queryDead runs query, which returns dead rows, and collects them; op
// names it in errors.
func queryDead(ctx context.Context, db DB, op, query string, args ...any) ([]DeadRow, error) {
	rows, err := db.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	out, err := pgx.CollectRows(rows, scanDead)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return out, nil
}

func scanDead(r pgx.CollectableRow) (DeadRow, error) {
	var d DeadRow
	err := r.Scan(&d.ID, &d.MessageID, &d.Exchange, &d.RoutingKey, &d.Attempts, &d.LastError, &d.CreatedAt, &d.DeadAt)
	return d, err
}

// requeue gives dead rows a fresh set of attempts, due now. last_error is
// kept so the history stays readable until the next attempt.
const requeue = `
UPDATE outbox SET dead_at = NULL, attempts = 0, available_at = now()
WHERE dead_at IS NOT NULL AND ($1::bigint[] IS NULL OR id = ANY($1))
RETURNING id`

// Requeue moves dead rows back to pending: the rows with the given ids, or
// every dead row when ids is nil. It returns the ids it requeued; an id
// that was not dead (or does not exist) is simply not among them.
//
// A dead row that still breaks a row limit (see migration 3) cannot be
// made pending: the table's CHECK constraints refuse it. Then Requeue
// requeues the others one by one and returns them with a *RefusedError
// naming each refused row and its constraint.
func Requeue(ctx context.Context, db DB, ids []int64) ([]int64, error) {
	done, err := requeueRows(ctx, db, ids)
	if err == nil {
		return done, nil
	}
	if !isCheckViolation(err) {
		return nil, fmt.Errorf("requeue: %w", err)
	}
	// One row or more breaks a limit: find them, one row at a time.
	rows, err := db.Query(ctx, `SELECT id FROM outbox WHERE dead_at IS NOT NULL AND ($1::bigint[] IS NULL OR id = ANY($1)) ORDER BY id`, ids)
	if err != nil {
		return nil, fmt.Errorf("requeue: %w", err)
	}
	dead, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("requeue: %w", err)
	}
	refused := &RefusedError{Constraints: map[int64]string{}}
	done = nil
	for _, id := range dead {
		one, err := requeueRows(ctx, db, []int64{id})
		var pg *pgconn.PgError
		switch {
		case err == nil:
			done = append(done, one...)
		case errors.As(err, &pg) && pg.Code == checkViolation:
			refused.IDs = append(refused.IDs, id)
			refused.Constraints[id] = pg.ConstraintName
		default:
			return done, fmt.Errorf("requeue: %w", err)
		}
	}
	if len(refused.IDs) == 0 {
		return done, nil
	}
	return done, refused
}

func requeueRows(ctx context.Context, db DB, ids []int64) ([]int64, error) {
	if tx, ok := db.(pgx.Tx); ok {
		// In the caller's transaction (Audited): a refused row must not
		// abort it, so each try runs under a savepoint.
		var done []int64
		err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
			var err error
			done, err = requeueOnce(ctx, sp, ids)
			return err
		})
		return done, err
	}
	return requeueOnce(ctx, db, ids)
}

func requeueOnce(ctx context.Context, db DB, ids []int64) ([]int64, error) {
	rows, err := db.Query(ctx, requeue, ids)
	if err != nil {
		return nil, err
	}
	done, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, err
	}
	sort.Slice(done, func(i, j int) bool { return done[i] < done[j] })
	return done, nil
}

// checkViolation is SQLSTATE check_violation.
const checkViolation = "23514"

func isCheckViolation(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == checkViolation
}

// RefusedError lists dead rows Requeue left dead because they still break
// a row limit; fix the field in the same UPDATE that requeues the row (see
// docs/design.md, "Row limits").
type RefusedError struct {
	IDs         []int64
	Constraints map[int64]string // id -> the CHECK constraint it breaks
}

func (e *RefusedError) Error() string {
	parts := make([]string, len(e.IDs))
	for i, id := range e.IDs {
		parts[i] = fmt.Sprintf("%d (%s)", id, e.Constraints[id])
	}
	return "requeue: rows that still break a row limit were left dead: " + strings.Join(parts, ", ") +
		"; fix the field in the UPDATE that requeues them"
}

// discard deletes dead rows, and only dead rows: a pending row is the
// relay's to publish, a published one retention's to delete.
const discard = `
DELETE FROM outbox WHERE dead_at IS NOT NULL AND id = ANY($1)
RETURNING id, message_id::text, exchange, routing_key, attempts, coalesce(last_error, ''), created_at, dead_at`

// Discard deletes the dead rows with the given ids and returns them as
// they were (sorted by id), so the caller can say what it removed. An id
// that is not a dead row is left alone and is not among them. Deleting a
// dead keyed row releases its key's later rows under OrderingBlock.
//
// Deleting, rather than marking the row published with a note, keeps
// published_at meaning "the broker confirmed it": metrics, retention and
// anyone reading the table can trust it.
func Discard(ctx context.Context, db DB, ids []int64) ([]DeadRow, error) {
	out, err := queryDead(ctx, db, "discard", discard, ids)
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// retryNow makes pending rows due now; the notification wakes the relays
// listening on the schema's channel, as an insert does.
const (
	retryNow = `
UPDATE outbox SET available_at = now()
WHERE id = ANY($1) AND published_at IS NULL AND dead_at IS NULL
RETURNING id`
	// The channel the insert trigger notifies: named after the schema of
	// the outbox table this connection's search_path finds, which need
	// not be its current schema.
	wakeRelays = `SELECT pg_notify(n.nspname::text || '.outbox', '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = 'outbox'::regclass`
)

// RetryNow makes the pending rows with the given ids (waiting for a retry,
// or delayed by available_at) due now, and wakes the relays. It returns
// the ids it changed, sorted; a published, dead or unknown id is not among
// them (requeue a dead row with Requeue). Its attempts are kept.
func RetryNow(ctx context.Context, db DB, ids []int64) ([]int64, error) {
	rows, err := db.Query(ctx, retryNow, ids)
	if err != nil {
		return nil, fmt.Errorf("retry: %w", err)
	}
	done, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("retry: %w", err)
	}
	if len(done) > 0 {
		if _, err := db.Exec(ctx, wakeRelays); err != nil {
			return done, fmt.Errorf("retry: wake the relays: %w", err)
		}
	}
	sort.Slice(done, func(i, j int) bool { return done[i] < done[j] })
	return done, nil
}

// BlockedKey is an ordering key with a dead row: under OrderingBlock its
// later rows wait until the row is requeued or discarded.
type BlockedKey struct {
	Key     string
	DeadID  int64 // the key's first dead row
	Waiting int64 // pending rows of the key after it
}

// listBlocked reads the dead keyed rows from outbox_dead_idx and counts
// each key's pending rows after its first dead one on
// outbox_key_unpublished_idx.
const listBlocked = `
SELECT d.ordering_key, d.dead_id,
       (SELECT count(*) FROM outbox p
        WHERE p.ordering_key = d.ordering_key AND p.published_at IS NULL AND p.dead_at IS NULL
          AND p.id > d.dead_id)
FROM (SELECT ordering_key, min(id) AS dead_id FROM outbox
      WHERE dead_at IS NOT NULL AND ordering_key IS NOT NULL
      GROUP BY ordering_key) d
ORDER BY d.dead_id
LIMIT $1`

// ListBlockedKeys returns up to limit keys with a dead row, the key whose
// dead row is oldest first.
func ListBlockedKeys(ctx context.Context, db DB, limit int) ([]BlockedKey, error) {
	rows, err := db.Query(ctx, listBlocked, limit)
	if err != nil {
		return nil, fmt.Errorf("blocked keys: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (BlockedKey, error) {
		var b BlockedKey
		err := r.Scan(&b.Key, &b.DeadID, &b.Waiting)
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("blocked keys: %w", err)
	}
	return out, nil
}

// AuditEntry is one row of relay_audit: an operator action.
type AuditEntry struct {
	ID         int64
	At         time.Time
	Actor      string // the database role that acted (session_user)
	Via        string // "cli", "console"
	Action     string // requeue, retry, discard, replay
	Filter     json.RawMessage
	Rows       int64
	FinishedAt *time.Time // nil while a replay runs (or if it was interrupted)
}

// Audited runs act in a transaction and records it in relay_audit in the
// same transaction: an action that could not be recorded is not done.
// act returns how many rows it changed. filter is what the action was
// given (row ids, a replay's filter), stored as JSON.
func Audited(ctx context.Context, db TxDB, via, action string, filter any, act func(tx pgx.Tx) (int64, error)) error {
	f, err := json.Marshal(filter)
	if err != nil {
		return fmt.Errorf("%s: audit: %w", action, err)
	}
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		n, actErr := act(tx)
		var refused *RefusedError
		if actErr != nil && !errors.As(actErr, &refused) {
			return actErr
		}
		if _, err := tx.Exec(ctx, auditInsert, via, action, f, n, true); err != nil {
			return fmt.Errorf("%s: audit: %w", action, err)
		}
		return actErr
	})
}

const listAudit = `
SELECT id, at, actor, via, action, filter, rows, finished_at FROM relay_audit
WHERE ($1::bigint = 0 OR id < $1)
ORDER BY id DESC
LIMIT $2`

// ListAudit returns up to limit audit entries, newest first, older than
// the entry before (0: from the newest): keyset pagination on the
// primary key.
func ListAudit(ctx context.Context, db DB, before int64, limit int) ([]AuditEntry, error) {
	rows, err := db.Query(ctx, listAudit, before, limit)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditEntry, error) {
		var a AuditEntry
		err := r.Scan(&a.ID, &a.At, &a.Actor, &a.Via, &a.Action, &a.Filter, &a.Rows, &a.FinishedAt)
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return out, nil
}
