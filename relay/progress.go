package relay

import (
	"context"
	"net"
	"strconv"
	"sync/atomic"
	"time"
)

// progress counts what the workers did since the last progress line.
type progress struct {
	published, failed atomic.Int64
}

// logProgress writes one line per stats_interval while there is work: rows
// published or failed since the last line, or a backlog. An idle relay
// (nothing moved, nothing pending) stays quiet.
func (r *Relay) logProgress(st Status) {
	published, failed := r.progress.published.Swap(0), r.progress.failed.Swap(0)
	if published == 0 && failed == 0 && st.Due == 0 { // idle, or only rows not due yet
		return
	}
	r.log.Info("progress", "interval", r.cfg.StatsInterval, "published", published, "failed", failed,
		"backlog", st.Pending, "due", st.Due, "dead", st.Dead, "oldest_pending_age", st.OldestPendingAge.Round(time.Millisecond))
}

// databaseAttrs names the database the relay works on, for its start line:
// host and port (from the pool's configuration: no user, no password), the
// database and the schema the outbox is found in. A query that fails says
// so instead of holding the start.
func (r *Relay) databaseAttrs(ctx context.Context) []any {
	cc := r.pool.Config().ConnConfig
	attrs := []any{"database_host", net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port)))}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var db, schema *string
	if err := r.pool.QueryRow(qctx, `SELECT current_database(), current_schema()`).Scan(&db, &schema); err != nil {
		return append(attrs, "database_err", err)
	}
	deref := func(s *string) string {
		if s == nil {
			return "(none)"
		}
		return *s
	}
	return append(attrs, "database", deref(db), "schema", deref(schema))
}
