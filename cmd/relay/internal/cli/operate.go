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
	if asJSON, _ := fs.GetBool("json"); asJSON {
		out := map[string]any{
			"pending":                    st.Pending,
			"due":                        st.Due,
			"held":                       st.HeldByPending + st.HeldByDead,
			"dead":                       st.Dead,
			"oldest_pending_age_seconds": st.OldestPendingAge.Seconds(),
			"blocked_keys":               st.BlockedKeys,
			"ordering_policy":            cfg.OrderingPolicy,
			"table_bytes":                st.TableBytes,
			"table_dead_tuples":          st.DeadTuples,
		}
		list := []map[string]any{} // [] when empty, never null
		for _, s := range st.ByExchange {
			list = append(list, map[string]any{"exchange": s.Exchange, "pending": s.Pending, "due": s.Due, "held": s.HeldByPending + s.HeldByDead,
				"dead": s.Dead, "oldest_pending_age_seconds": s.OldestPendingAge.Seconds()})
		}
		out["by_exchange"] = list
		keys := []map[string]any{}
		for _, b := range blocked {
			keys = append(keys, map[string]any{"ordering_key": b.Key, "dead_id": b.DeadID, "waiting": b.Waiting})
		}
		out["blocked"] = keys
		return writeJSON(e, out)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "exchange\tpending\tdue\theld\tdead\toldest pending")
	for _, s := range st.ByExchange {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\n", exchangeName(s.Exchange), s.Pending, s.Due, s.HeldByPending+s.HeldByDead,
			s.Dead, age(s.OldestPendingAge))
	}
	fmt.Fprintf(tw, "TOTAL\t%d\t%d\t%d\t%d\t%s\n", st.Pending, st.Due, st.HeldByPending+st.HeldByDead, st.Dead, age(st.OldestPendingAge))
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
	fmt.Fprintf(e.stdout, "outbox table: %.1f MiB, %d dead tuples\n", float64(st.TableBytes)/(1<<20), st.DeadTuples)
	return nil
}

func runDead(ctx context.Context, e *env, cfg config.Config, fs *pflag.FlagSet) error {
	limit, _ := fs.GetInt("limit")
	if limit < 1 {
		return usageError{"--limit must be at least 1"}
	}
	pool, err := openPool(ctx, cfg)
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
	done, err := relay.Requeue(ctx, pool, ids)
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

// blockedShown is how many blocked keys relay status lists.
const blockedShown = 20

// runDiscard deletes dead rows (relay.Discard) and prints each one it
// deleted, so the operator's terminal keeps a record of what went.
func runDiscard(ctx context.Context, e *env, cfg config.Config, fs *pflag.FlagSet) error {
	ids, pool, err := idsAndPool(ctx, cfg, fs, "dead rows to discard")
	if err != nil {
		return err
	}
	defer pool.Close()
	gone, err := relay.Discard(ctx, pool, ids)
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
	done, err := relay.RetryNow(ctx, pool, ids)
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
