package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TxDB is a DB that can begin a transaction: a pool or a connection.
type TxDB interface {
	DB
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// ReplayFilter selects the published rows a replay copies. Every field
// set narrows the selection; at least one must be set, so that a replay
// of the whole table is never an accident.
type ReplayFilter struct {
	FromID, ToID int64     // id range, inclusive; 0 leaves that end open
	Since, Until time.Time // created_at in [Since, Until); zero leaves that end open
	OrderingKey  string    // "" matches any
	Exchange     *string   // nil matches any; "" is the default exchange
	RoutingKey   string    // "" matches any
}

// Empty reports whether no field is set.
func (f ReplayFilter) Empty() bool {
	return f.FromID == 0 && f.ToID == 0 && f.Since.IsZero() && f.Until.IsZero() &&
		f.OrderingKey == "" && f.Exchange == nil && f.RoutingKey == ""
}

// MarshalJSON is the filter as relay_audit records it: only what is set.
func (f ReplayFilter) MarshalJSON() ([]byte, error) {
	m := map[string]any{}
	if f.FromID != 0 {
		m["from_id"] = f.FromID
	}
	if f.ToID != 0 {
		m["to_id"] = f.ToID
	}
	if !f.Since.IsZero() {
		m["since"] = f.Since.UTC().Format(time.RFC3339Nano)
	}
	if !f.Until.IsZero() {
		m["until"] = f.Until.UTC().Format(time.RFC3339Nano)
	}
	if f.OrderingKey != "" {
		m["ordering_key"] = f.OrderingKey
	}
	if f.Exchange != nil {
		m["exchange"] = *f.Exchange
	}
	if f.RoutingKey != "" {
		m["routing_key"] = f.RoutingKey
	}
	return json.Marshal(m)
}

// where returns the filter as SQL conditions on outbox, numbering its
// parameters from $first, and their values. Only fixed fragments enter
// the SQL text; the values go as parameters. Building the statement from
// the fields set (rather than "$n IS NULL OR col = $n" for all of them)
// lets the planner use the index that fits: the primary key for an id
// range, outbox_ordering_key_idx for a key, outbox_created_at_idx for a
// time range.
func (f ReplayFilter) where(first int) (string, []any) {
	var conds []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, strings.ReplaceAll(cond, "$?", "$"+strconv.Itoa(first+len(args)-1)))
	}
	if f.FromID != 0 {
		add("id >= $?", f.FromID)
	}
	if f.ToID != 0 {
		add("id <= $?", f.ToID)
	}
	if !f.Since.IsZero() {
		add("created_at >= $?", f.Since)
	}
	if !f.Until.IsZero() {
		add("created_at < $?", f.Until)
	}
	if f.OrderingKey != "" {
		add("ordering_key = $?", f.OrderingKey)
	}
	if f.Exchange != nil {
		add("exchange = $?", *f.Exchange)
	}
	if f.RoutingKey != "" {
		add("routing_key = $?", f.RoutingKey)
	}
	if len(conds) == 0 {
		return "true", nil
	}
	return strings.Join(conds, " AND "), args
}

// ReplayOptions configures Replay.
type ReplayOptions struct {
	Filter ReplayFilter
	// SameID keeps each row's message_id: consumers with an inbox apply
	// only the messages they have not applied. Otherwise every copy gets
	// a new message id and every consumer applies it again.
	SameID bool
	// Batch is how many copies one step inserts (default 100). The next
	// step waits until every copy of the previous one is published (or
	// dead), so at most Batch copies are ever pending: a row the
	// application writes during a replay waits behind at most Batch
	// copies.
	Batch int
	// Rate caps the copies inserted per second (0: no cap beyond Batch).
	Rate float64
	// Via names the client in the audit table ("cli", "console").
	Via string
	// Poll is how often a step checks that the previous one was
	// published (default 100ms).
	Poll time.Duration
	// OnStep, when set, is called after each step with the total so far.
	OnStep func(copied int64)
}

// ReplayResult says what a replay did.
type ReplayResult struct {
	AuditID int64 // its relay_audit row
	Copied  int64 // copies inserted (each published, or dead, by the return)
}

// ErrEmptyFilter is returned by Replay for a filter that selects
// everything.
var ErrEmptyFilter = errors.New("replay: the filter selects every row; set at least one field")

// replayCopy inserts copies of the next batch of selected rows as pending
// rows. The selection walks the filter's rows in id order from after the
// last original copied ($1); the copies are inserted in (ordering_key, id)
// order, so that the ordering trigger takes the keys' advisory locks in
// key order, as outbox.Enqueue does (two writers that lock keys in
// opposite orders can deadlock), while each key's copies still get
// ascending ids in their originals' order. A copy of a copy is never
// made: replay_of IS NULL selects the rows applications wrote.
const replayCopy = `
INSERT INTO outbox (message_id, exchange, routing_key, payload, content_type, headers, ordering_key,
                    type, correlation_id, reply_to, expiration, priority, app_id, replay_of)
SELECT CASE WHEN $2::bool THEN s.message_id ELSE gen_random_uuid() END, s.exchange, s.routing_key, s.payload,
       s.content_type, s.headers, s.ordering_key,
       s.type, s.correlation_id, s.reply_to, s.expiration, s.priority, s.app_id, s.id
FROM (SELECT * FROM outbox
      WHERE published_at IS NOT NULL AND replay_of IS NULL AND id > $1 AND %s
      ORDER BY id LIMIT $3) s
ORDER BY s.ordering_key, s.id
RETURNING id, replay_of`

const (
	auditInsert = `INSERT INTO relay_audit (via, action, filter, rows, finished_at)
VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END) RETURNING id`
	auditCount  = `UPDATE relay_audit SET rows = rows + $2 WHERE id = $1`
	auditFinish = `UPDATE relay_audit SET finished_at = now() WHERE id = $1`
	// replayPending counts the copies of a step not yet settled, on the
	// primary key.
	replayPending = `SELECT count(*) FROM outbox WHERE id = ANY($1) AND published_at IS NULL AND dead_at IS NULL`
)

// deadlockDetected is SQLSTATE deadlock_detected.
const deadlockDetected = "40P01"

// Replay publishes again the published rows opts.Filter selects, through
// the relay's own engine: it inserts copies of them as new pending rows
// (replay_of naming the original), which the running relays claim, order
// and mark like any other row. So a replay never races the relay's
// publishing: there is one publisher. Each key's copies are published in
// the originals' order, after the rows of the key that were pending when
// they were inserted.
//
// The replay is recorded in relay_audit before its first copy; each
// step adds its copies to the row's count in the step's own transaction,
// so the count is exact even if the replay is interrupted, and
// finished_at is set when the last copy is published. Replay returns when
// every copy is published or dead, or when ctx ends (the copies inserted
// so far are still published; the next steps are not taken). Nothing
// publishes the copies while no relay runs: Replay then waits.
func Replay(ctx context.Context, db TxDB, opts ReplayOptions) (ReplayResult, error) {
	if opts.Filter.Empty() {
		return ReplayResult{}, ErrEmptyFilter
	}
	if opts.Batch <= 0 {
		opts.Batch = 100
	}
	if opts.Poll <= 0 {
		opts.Poll = 100 * time.Millisecond
	}
	filter, err := json.Marshal(replayAudit{opts.Filter, opts.SameID})
	if err != nil {
		return ReplayResult{}, fmt.Errorf("replay: %w", err)
	}
	var res ReplayResult
	if err := db.QueryRow(ctx, auditInsert, opts.Via, "replay", filter, 0, false).Scan(&res.AuditID); err != nil {
		return res, fmt.Errorf("replay: audit: %w", err)
	}
	where, args := opts.Filter.where(4)
	query := fmt.Sprintf(replayCopy, where)
	start := time.Now()
	var cursor int64
	var step []int64
	for {
		if err := awaitSettled(ctx, db, step, opts.Poll); err != nil {
			return res, err
		}
		if opts.Rate > 0 {
			due := start.Add(time.Duration(float64(res.Copied) / opts.Rate * float64(time.Second)))
			if err := sleepUntil(ctx, due); err != nil {
				return res, err
			}
		}
		var last int64
		step, last, err = replayStep(ctx, db, query, append([]any{cursor, opts.SameID, opts.Batch}, args...), res.AuditID)
		if err != nil {
			return res, err
		}
		if len(step) == 0 {
			break
		}
		cursor = last
		res.Copied += int64(len(step))
		if opts.OnStep != nil {
			opts.OnStep(res.Copied)
		}
	}
	if _, err := db.Exec(ctx, auditFinish, res.AuditID); err != nil {
		return res, fmt.Errorf("replay: audit: %w", err)
	}
	return res, nil
}

// replayAudit is the filter column of a replay's audit row.
type replayAudit struct {
	Filter ReplayFilter `json:"filter"`
	SameID bool         `json:"same_id"`
}

// replayStep inserts one batch of copies and counts them in the audit row,
// in one transaction, and returns the copies' ids and the highest original
// id copied. A deadlock with an application's transaction (PostgreSQL
// aborts one of the two) is retried.
func replayStep(ctx context.Context, db TxDB, query string, args []any, auditID int64) ([]int64, int64, error) {
	for {
		var ids []int64
		var last int64
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, query, args...)
			if err != nil {
				return err
			}
			var id, of int64
			_, err = pgx.ForEachRow(rows, []any{&id, &of}, func() error {
				ids = append(ids, id)
				last = max(last, of)
				return nil
			})
			if err != nil || len(ids) == 0 {
				return err
			}
			_, err = tx.Exec(ctx, auditCount, auditID, len(ids))
			return err
		})
		var pg *pgconn.PgError
		if errors.As(err, &pg) && pg.Code == deadlockDetected {
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("replay: copy: %w", err)
		}
		return ids, last, nil
	}
}

// awaitSettled waits until none of the copies ids is pending.
func awaitSettled(ctx context.Context, db DB, ids []int64, poll time.Duration) error {
	if len(ids) == 0 {
		return nil
	}
	for {
		var n int64
		rows, err := db.Query(ctx, replayPending, ids)
		if err == nil {
			_, err = pgx.ForEachRow(rows, []any{&n}, func() error { return nil })
		}
		if err != nil {
			return fmt.Errorf("replay: await the relay: %w", err)
		}
		if n == 0 {
			return nil
		}
		if err := sleepUntil(ctx, time.Now().Add(poll)); err != nil {
			return err
		}
	}
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}
