package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/pflag"

	"github.com/outboxrelay/outboxrelay/config"
	"github.com/outboxrelay/outboxrelay/internal/redact"
	"github.com/outboxrelay/outboxrelay/migrations"
	"github.com/outboxrelay/outboxrelay/relay"
)

func statusFlags(fs *pflag.FlagSet) { fs.Bool("json", false, "print JSON") }

func deadFlags(fs *pflag.FlagSet) {
	fs.Bool("json", false, "print JSON")
	fs.Int("limit", 100, "list at most this many rows")
}

func requeueFlags(fs *pflag.FlagSet) { fs.Bool("all", false, "requeue every dead row") }

// poolConfig parses database_url and pins the pool's search_path to
// the configured schema, so the relay's unqualified table names find it.
func poolConfig(cfg config.Config) (*pgxpool.Config, error) {
	pc, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("database_url: %s", redact.Scrub(err.Error(), cfg.Secrets()))
	}
	if cfg.Schema != "" {
		pc.ConnConfig.RuntimeParams["search_path"] = migrations.SearchPath(cfg.Schema)
	}
	relay.ConnDefaults(&pc.ConnConfig.Config) // a dead first host of a multi-host URL is skipped
	return pc, nil
}

func openPool(ctx context.Context, cfg config.Config) (*pgxpool.Pool, error) {
	pc, err := poolConfig(cfg)
	if err != nil {
		return nil, err
	}
	pc.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	// Say what `relay run` says of a schema without the relay's tables
	// (or pointed at the wrong one), rather than a raw "relation does not
	// exist". Any other failure is left to the command's own queries,
	// which name it in their context (a role may lack SELECT on the
	// version table and still be allowed the command).
	if err := migrations.Check(ctx, pool); errors.Is(err, migrations.ErrNotMigrated) {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

func runStatus(ctx context.Context, e *env, cfg config.Config, fs *pflag.FlagSet) error {
	pool, err := openPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	st, err := relay.ReadStatus(ctx, pool)
	if err != nil {
		return err
	}
	if cfg.OrderingPolicy == string(relay.OrderingSkip) {
		st = st.Skip()
	}
	blocked, err := relay.ListBlockedKeys(ctx, pool, blockedShown)
	if err != nil {
		return err
	}
	failing, err := relay.ListFailing(ctx, pool, failingShown)
	if err != nil {
		return err
	}
	if asJSON, _ := fs.GetBool("json"); asJSON {
		out := map[string]any{
			"pending":                    st.Pending,
			"due":                        st.Due,
			"held":                       st.HeldByPending + st.HeldByDead,
			"dead":                       st.Dead,
			"failing":                    st.Failing,
			"oldest_pending_age_seconds": st.OldestPendingAge.Seconds(),
			"blocked_keys":               st.BlockedKeys,
			"ordering_policy":            cfg.OrderingPolicy,
			"table_bytes":                st.TableBytes,
			"table_dead_tuples":          st.DeadTuples,
		}
		list := []map[string]any{} // [] when empty, never null
		for _, s := range st.ByExchange {
			list = append(list, map[string]any{"exchange": s.Exchange, "pending": s.Pending, "due": s.Due, "held": s.HeldByPending + s.HeldByDead, "failing": s.Failing,
				"dead": s.Dead, "oldest_pending_age_seconds": s.OldestPendingAge.Seconds()})
		}
		out["by_exchange"] = list
		keys := []map[string]any{}
		for _, b := range blocked {
			keys = append(keys, map[string]any{"ordering_key": b.Key, "dead_id": b.DeadID, "waiting": b.Waiting})
		}
		out["blocked"] = keys
		fl := []map[string]any{}
		for _, f := range failing {
			fl = append(fl, map[string]any{"id": f.ID, "message_id": f.MessageID, "exchange": f.Exchange,
				"routing_key": f.RoutingKey, "ordering_key": f.OrderingKey, "attempts": f.Attempts,
				"last_error": f.LastError, "next_attempt": f.NextAttempt.UTC().Format(time.RFC3339Nano)})
		}
		out["failing_rows"] = fl
		return writeJSON(e, out)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "exchange\tpending\tdue\theld\tfailing\tdead\toldest pending")
	for _, s := range st.ByExchange {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\n", exchangeName(s.Exchange), s.Pending, s.Due, s.HeldByPending+s.HeldByDead,
			s.Failing, s.Dead, age(s.OldestPendingAge))
	}
	fmt.Fprintf(tw, "TOTAL\t%d\t%d\t%d\t%d\t%d\t%s\n", st.Pending, st.Due, st.HeldByPending+st.HeldByDead, st.Failing, st.Dead, age(st.OldestPendingAge))
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, statusLegend(st))
	held := "their later rows wait until the dead row is requeued or deleted"
	if cfg.OrderingPolicy == "skip" {
		held = "their later rows are published past it"
	}
	fmt.Fprintf(e.stdout, "\nordering keys with a dead row: %d (ordering_policy %s: %s)\n", st.BlockedKeys, cfg.OrderingPolicy, held)
	printBlocked(e, blocked, st.BlockedKeys)
	printFailing(e, failing, st.Failing)
	fmt.Fprintf(e.stdout, "outbox table: %.1f MiB, %d dead tuples\n", float64(st.TableBytes)/(1<<20), st.DeadTuples)
	return nil
}

func runDead(ctx context.Context, e *env, cfg config.Config, fs *pflag.FlagSet) error {
	limit, pool, err := limitAndPool(ctx, cfg, fs)
	if err != nil {
		return err
	}
	defer pool.Close()
	rows, err := relay.ListDead(ctx, pool, limit)
	if err != nil {
		return err
	}
	if asJSON, _ := fs.GetBool("json"); asJSON {
		return writeJSON(e, deadJSON(rows))
	}
	if len(rows) == 0 {
		fmt.Fprintln(e.stdout, "no dead rows")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "id\tmessage_id\texchange\trouting_key\tattempts\tdead_at\tlast_error")
	for _, d := range rows {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", d.ID, printable(d.MessageID), exchangeName(d.Exchange),
			printable(d.RoutingKey), d.Attempts, d.DeadAt.UTC().Format(time.RFC3339), printable(oneLine(d.LastError)))
	}
	if len(rows) == limit {
		fmt.Fprintf(tw, "(first %d shown; --limit for more)\n", limit)
	}
	return tw.Flush()
}

func runRequeue(ctx context.Context, e *env, cfg config.Config, fs *pflag.FlagSet) error {
	all, _ := fs.GetBool("all")
	ids, err := parseIDs(fs.Args())
	if err != nil {
		return err
	}
	switch {
	case all && len(ids) > 0:
		return usageError{"give row ids or --all, not both"}
	case !all && len(ids) == 0:
		return usageError{"give the ids of the dead rows to requeue, or --all"}
	}
	pool, err := openPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	var done []int64
	err = relay.Audited(ctx, pool, "cli", "requeue", idsFilter(ids), func(tx pgx.Tx) (int64, error) {
		var err error
		done, err = relay.Requeue(ctx, tx, ids)
		return int64(len(done)), err
	})
	var refused *relay.RefusedError
	if err != nil && !errors.As(err, &refused) {
		return err
	}
	fmt.Fprintf(e.stdout, "requeued %d dead row(s)%s\n", len(done), listSuffix(done))
	if refused != nil {
		return refused
	}
	if missing := notIn(ids, done); len(missing) > 0 {
		return fmt.Errorf("not dead or not found, left as they were: %s", joinInts(missing))
	}
	return nil
}

func listSuffix(ids []int64) string {
	if len(ids) == 0 || len(ids) > 20 {
		return ""
	}
	return ": " + joinInts(ids)
}

// exchangeName names an exchange for text output.
func exchangeName(ex string) string {
	if ex == "" {
		return "(default)"
	}
	return printable(ex)
}

func age(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(time.Second).String()
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// statusLegend says what due and held mean, and where dead rows are
// looked at.
func statusLegend(st relay.Status) string {
	l := fmt.Sprintf("\ndue: available now, nothing ahead of them; held: available, but behind an earlier row of their key "+
		"(%d behind a pending row, %d behind a dead one)", st.HeldByPending, st.HeldByDead)
	if st.Dead > 0 {
		l += fmt.Sprintf("\n%d dead row(s): `relay dead` lists them with their last error; `relay requeue ID...` or `relay discard ID...` then", st.Dead)
	}
	return l
}

// blockedShown and failingShown are how many blocked keys and failing
// rows relay status lists.
const (
	blockedShown = 20
	failingShown = 20
)

// printFailing lists failing rows (a failed attempt, not dead yet) with
// their reason and next attempt.
func printFailing(e *env, failing []relay.FailingRow, total int64) {
	fmt.Fprintf(e.stdout, "failing rows (a failed attempt, not dead yet): %d\n", total)
	for _, f := range failing {
		fmt.Fprintf(e.stdout, "  %d %s: attempt %d failed, next at %s: %s\n", f.ID, exchangeName(f.Exchange)+" "+printable(f.RoutingKey),
			f.Attempts, f.NextAttempt.UTC().Format(time.RFC3339), printable(oneLine(f.LastError)))
	}
	if total > int64(len(failing)) {
		fmt.Fprintf(e.stdout, "  (first %d shown, oldest first)\n", len(failing))
	}
}

// runDiscard deletes dead rows (relay.Discard) and prints each one it
// deleted, so the operator's terminal keeps a record of what went.
func runDiscard(ctx context.Context, e *env, cfg config.Config, fs *pflag.FlagSet) error {
	ids, pool, err := idsAndPool(ctx, cfg, fs, "dead rows to discard")
	if err != nil {
		return err
	}
	defer pool.Close()
	var gone []relay.DeadRow
	err = relay.Audited(ctx, pool, "cli", "discard", idsFilter(ids), func(tx pgx.Tx) (int64, error) {
		var err error
		gone, err = relay.Discard(ctx, tx, ids)
		return int64(len(gone)), err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "discarded %d dead row(s)\n", len(gone))
	if len(gone) > 0 {
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "id\tmessage_id\texchange\trouting_key\tattempts\tlast_error")
		for _, d := range gone {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\n", d.ID, printable(d.MessageID), exchangeName(d.Exchange),
				printable(d.RoutingKey), d.Attempts, printable(oneLine(d.LastError)))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	done := make([]int64, len(gone))
	for i, d := range gone {
		done[i] = d.ID
	}
	if missing := notIn(ids, done); len(missing) > 0 {
		return fmt.Errorf("not dead or not found, left as they were: %s", joinInts(missing))
	}
	return nil
}

// runRetry makes waiting rows due now (relay.RetryNow).
func runRetry(ctx context.Context, e *env, cfg config.Config, fs *pflag.FlagSet) error {
	ids, pool, err := idsAndPool(ctx, cfg, fs, "pending rows to retry now")
	if err != nil {
		return err
	}
	defer pool.Close()
	var done []int64
	err = relay.Audited(ctx, pool, "cli", "retry", idsFilter(ids), func(tx pgx.Tx) (int64, error) {
		var err error
		done, err = relay.RetryNow(ctx, tx, ids)
		return int64(len(done)), err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "made %d pending row(s) due now%s\n", len(done), listSuffix(done))
	if missing := notIn(ids, done); len(missing) > 0 {
		return fmt.Errorf("not pending (published, dead: use relay requeue) or not found, left as they were: %s", joinInts(missing))
	}
	return nil
}

// idsAndPool reads the row ids a command was given (at least one: what
// they are for names them in the usage error) and opens its pool.
func idsAndPool(ctx context.Context, cfg config.Config, fs *pflag.FlagSet, what string) ([]int64, *pgxpool.Pool, error) {
	ids, err := parseIDs(fs.Args())
	if err != nil {
		return nil, nil, err
	}
	if len(ids) == 0 {
		return nil, nil, usageError{"give the ids of the " + what}
	}
	pool, err := openPool(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	return ids, pool, nil
}

// parseIDs reads row ids from the command's arguments.
func parseIDs(args []string) ([]int64, error) {
	var ids []int64
	for _, a := range args {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id < 1 {
			return nil, usageError{fmt.Sprintf("%q is not a row id", a)}
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// notIn returns the ids of asked that are not in done, in asked's order.
func notIn(asked, done []int64) []int64 {
	got := map[int64]bool{}
	for _, id := range done {
		got[id] = true
	}
	var missing []int64
	for _, id := range asked {
		if !got[id] {
			missing = append(missing, id)
		}
	}
	return missing
}

func printBlocked(e *env, blocked []relay.BlockedKey, total int64) {
	for _, b := range blocked {
		fmt.Fprintf(e.stdout, "  %s: dead row %d, %d pending row(s) after it\n", printable(b.Key), b.DeadID, b.Waiting)
	}
	if total > int64(len(blocked)) {
		fmt.Fprintf(e.stdout, "  (first %d shown, oldest dead row first)\n", len(blocked))
	}
}

// writeJSON prints v as one indented JSON document.
func writeJSON(e *env, v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// deadJSON is relay dead --json's document: an array, [] when no row is
// dead.
func deadJSON(rows []relay.DeadRow) []map[string]any {
	out := make([]map[string]any, 0, len(rows))
	for _, d := range rows {
		out = append(out, map[string]any{"id": d.ID, "message_id": d.MessageID, "exchange": d.Exchange,
			"routing_key": d.RoutingKey, "attempts": d.Attempts, "last_error": d.LastError,
			"created_at": d.CreatedAt.UTC().Format(time.RFC3339Nano), "dead_at": d.DeadAt.UTC().Format(time.RFC3339Nano)})
	}
	return out
}

// idsFilter is what relay_audit records of an action on row ids: the ids,
// or "all" (requeue --all).
func idsFilter(ids []int64) map[string]any {
	if ids == nil {
		return map[string]any{"all": true}
	}
	return map[string]any{"ids": ids}
}

func replayFlags(fs *pflag.FlagSet) {
	fs.Int64("from-id", 0, "replay rows with id >= this")
	fs.Int64("to-id", 0, "replay rows with id <= this")
	fs.String("since", "", "replay rows created at or after this time (RFC 3339, e.g. 2026-01-02T15:04:05Z)")
	fs.String("until", "", "replay rows created before this time (RFC 3339)")
	fs.String("ordering-key", "", "replay rows of this ordering key")
	fs.String("exchange", "", "replay rows sent to this exchange (--exchange= for the default exchange)")
	fs.String("routing-key", "", "replay rows with this routing key")
	fs.String("message-ids", "", "same: copies keep the message id (inbox consumers apply only what they missed); new: fresh ids (every consumer applies again)")
	fs.Int("batch", 100, "copies per step; a step waits until the previous one is published")
	fs.Float64("rate", 0, "at most this many copies per second (0: no cap beyond --batch)")
}

// replayOptions reads relay replay's flags.
func replayOptions(fs *pflag.FlagSet) (relay.ReplayOptions, error) {
	var o relay.ReplayOptions
	f := &o.Filter
	f.FromID, _ = fs.GetInt64("from-id")
	f.ToID, _ = fs.GetInt64("to-id")
	for _, t := range []struct {
		name string
		dst  *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		v, _ := fs.GetString(t.name)
		if v == "" {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return o, usageError{fmt.Sprintf("--%s: %q is not an RFC 3339 time (e.g. 2026-01-02T15:04:05Z)", t.name, v)}
		}
		*t.dst = at
	}
	f.OrderingKey, _ = fs.GetString("ordering-key")
	f.RoutingKey, _ = fs.GetString("routing-key")
	if fs.Changed("exchange") {
		ex, _ := fs.GetString("exchange")
		f.Exchange = &ex
	}
	switch ids, _ := fs.GetString("message-ids"); ids {
	case "same":
		o.SameID = true
	case "new":
	default:
		return o, usageError{"--message-ids must be same or new"}
	}
	o.Batch, _ = fs.GetInt("batch")
	o.Rate, _ = fs.GetFloat64("rate")
	if o.Batch < 1 || o.Batch > 10000 {
		return o, usageError{"--batch must be from 1 to 10000"}
	}
	if o.Rate < 0 {
		return o, usageError{"--rate must not be negative"}
	}
	if f.Empty() {
		return o, usageError{"give a filter: --from-id, --to-id, --since, --until, --ordering-key, --exchange or --routing-key"}
	}
	if f.FromID < 0 || f.ToID < 0 || (f.ToID != 0 && f.FromID > f.ToID) {
		return o, usageError{"--from-id and --to-id must be positive, from <= to"}
	}
	o.Via = "cli"
	return o, nil
}

// runReplay copies the selected published rows as new pending rows
// (relay.Replay) and waits until the relay published them.
func runReplay(ctx context.Context, e *env, cfg config.Config, fs *pflag.FlagSet) error {
	o, err := replayOptions(fs)
	if err != nil {
		return err
	}
	pool, err := openPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	o.OnStep = func(n int64) { fmt.Fprintf(e.stderr, "replay: %d copied\n", n) }
	res, err := relay.Replay(ctx, pool, o)
	if err != nil {
		if res.AuditID != 0 {
			return fmt.Errorf("%w (audit entry %d holds the %d row(s) copied before)", err, res.AuditID, res.Copied)
		}
		return err
	}
	fmt.Fprintf(e.stdout, "replayed %d row(s), all published (audit entry %d)\n", res.Copied, res.AuditID)
	return nil
}

func auditFlags(fs *pflag.FlagSet) {
	fs.Bool("json", false, "print JSON")
	fs.Int("limit", 50, "list at most this many entries")
	fs.Int64("before", 0, "list entries older than this entry id (the next page)")
}

// runAudit lists relay_audit, newest first.
func runAudit(ctx context.Context, e *env, cfg config.Config, fs *pflag.FlagSet) error {
	before, _ := fs.GetInt64("before")
	limit, pool, err := limitAndPool(ctx, cfg, fs)
	if err != nil {
		return err
	}
	defer pool.Close()
	list, err := relay.ListAudit(ctx, pool, before, limit)
	if err != nil {
		return err
	}
	if asJSON, _ := fs.GetBool("json"); asJSON {
		out := make([]map[string]any, 0, len(list))
		for _, a := range list {
			m := map[string]any{"id": a.ID, "at": a.At.UTC().Format(time.RFC3339Nano), "actor": a.Actor, "via": a.Via,
				"action": a.Action, "filter": a.Filter, "rows": a.Rows, "finished_at": nil}
			if a.FinishedAt != nil {
				m["finished_at"] = a.FinishedAt.UTC().Format(time.RFC3339Nano)
			}
			out = append(out, m)
		}
		return writeJSON(e, out)
	}
	if len(list) == 0 {
		fmt.Fprintln(e.stdout, "no audit entries")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "id\tat\tactor\tvia\taction\trows\tfinished\tfilter")
	for _, a := range list {
		fin := "running or interrupted"
		if a.FinishedAt != nil {
			fin = a.FinishedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", a.ID, a.At.UTC().Format(time.RFC3339), printable(a.Actor),
			printable(a.Via), printable(a.Action), a.Rows, fin, printable(string(a.Filter)))
	}
	if len(list) == limit {
		fmt.Fprintf(tw, "(next page: --before %d)\n", list[len(list)-1].ID)
	}
	return tw.Flush()
}

// limitAndPool reads a listing command's --limit (at least 1) and opens
// its pool.
func limitAndPool(ctx context.Context, cfg config.Config, fs *pflag.FlagSet) (int, *pgxpool.Pool, error) {
	limit, _ := fs.GetInt("limit")
	if limit < 1 {
		return 0, nil, usageError{"--limit must be at least 1"}
	}
	pool, err := openPool(ctx, cfg)
	return limit, pool, err
}
