package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/pflag"

	"github.com/outboxrelay/outboxrelay/config"
	"github.com/outboxrelay/outboxrelay/relay"
)

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
