package console

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// searchForm is the search's query string.
type searchForm struct {
	MessageID, Key, Exchange, RoutingKey, State, Since, Until string
	ExchangeSet                                               bool
	Before                                                    int64
}

// foundRow is a row of the search's results.
type foundRow struct {
	ID                                   int64
	MessageID, Exchange, RoutingKey, Key string
	State, LastError                     string
	Attempts                             int
	CreatedAt                            time.Time
}

type searchData struct {
	Form  searchForm
	Rows  []foundRow
	Next  string // the next page's query string, "" on the last page
	Error string
}

// The search pages by keyset, newest first: each page is the rows with id
// below the last one shown (before), so page 1,000 costs what page 1
// does; there is no OFFSET. Conditions are added from fixed fragments, the
// values passed as parameters, so the planner picks the index that fits
// each filter.
//
// By message id the condition names both partial indexes' predicates
// (outbox_message_id_key holds the rows applications wrote, replay_of IS
// NULL; outbox_replay_message_id_idx the copies): a bare message_id = $1
// matches neither predicate, and would read the primary key backwards
// through the whole table. Plans on a table of 1,000,000 published rows
// over 10,000 keys (PostgreSQL 15, analyzed, EXPLAIN (ANALYZE, BUFFERS)):
//
//	by message id:
//	Limit (actual time=0.084..0.085 rows=1)  Buffers: shared hit=9
//	  -> Sort  Sort Key: id DESC
//	       -> Bitmap Heap Scan on outbox (rows=1)
//	            -> BitmapOr
//	                 -> Bitmap Index Scan on outbox_message_id_key (rows=1)
//	                 -> Bitmap Index Scan on outbox_replay_message_id_idx (rows=0)
//	Execution Time: 0.124 ms
//
//	by ordering key (100 rows of the key), first page:
//	Limit (rows=51)  Buffers: shared hit=54
//	  -> Index Only Scan Backward using outbox_ordering_key_idx on outbox
//	       Index Cond: (ordering_key = 'key-4242')
//	Execution Time: 0.500 ms
//	a later page (id < cursor): Bitmap Index Scan on outbox_ordering_key_idx,
//	Index Cond: ((ordering_key = 'key-4242') AND (id < 500000)),
//	Buffers: shared hit=46 read=7, Execution Time: 0.520 ms
//
// By exchange or routing key alone there is no index (it would cost every
// insert one more): the search walks the primary key backwards from the
// cursor and filters, which is quick while matches are common and reads
// the table when they are rare; narrow it with a time range, which uses
// outbox_created_at_idx.
func buildSearch(f searchForm) (string, []any, error) {
	var conds []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, strings.ReplaceAll(cond, "$?", "$"+strconv.Itoa(len(args))))
	}
	if f.MessageID != "" {
		if !isUUID(f.MessageID) {
			return "", nil, fmt.Errorf("message id %q is not a UUID", f.MessageID)
		}
		add("((message_id = $?::uuid AND replay_of IS NULL) OR (message_id = $?::uuid AND replay_of IS NOT NULL))", f.MessageID)
	}
	if f.Key != "" {
		add("ordering_key = $?", f.Key)
	}
	if f.ExchangeSet {
		add("exchange = $?", f.Exchange)
	}
	if f.RoutingKey != "" {
		add("routing_key = $?", f.RoutingKey)
	}
	for _, t := range []struct{ v, cond string }{{f.Since, "created_at >= $?"}, {f.Until, "created_at < $?"}} {
		if t.v == "" {
			continue
		}
		at, err := parseTime(t.v)
		if err != nil {
			return "", nil, err
		}
		add(t.cond, at)
	}
	switch f.State {
	case "":
	case "pending":
		conds = append(conds, "published_at IS NULL AND dead_at IS NULL")
	case "failing":
		conds = append(conds, "published_at IS NULL AND dead_at IS NULL AND attempts > 0")
	case "dead":
		conds = append(conds, "dead_at IS NOT NULL")
	case "published":
		conds = append(conds, "published_at IS NOT NULL")
	default:
		return "", nil, fmt.Errorf("state %q is none of pending, failing, dead, published", f.State)
	}
	if f.Before > 0 {
		add("id < $?", f.Before)
	}
	where := "true"
	if len(conds) > 0 {
		where = strings.Join(conds, " AND ")
	}
	args = append(args, searchPage+1)
	return `SELECT id, message_id::text, exchange, routing_key, coalesce(ordering_key, ''), attempts,
       coalesce(last_error, ''), created_at, published_at, dead_at
FROM outbox WHERE ` + where + ` ORDER BY id DESC LIMIT $` + strconv.Itoa(len(args)), args, nil
}

// parseTime reads an RFC 3339 time, or the browser's datetime-local form
// (taken as UTC).
func parseTime(v string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time (RFC 3339, e.g. 2026-01-02T15:04:05Z)", v)
}

func readSearch(q url.Values) searchForm {
	f := searchForm{MessageID: strings.TrimSpace(q.Get("message_id")), Key: q.Get("key"), RoutingKey: q.Get("routing_key"),
		State: q.Get("state"), Since: q.Get("since"), Until: q.Get("until")}
	if q.Get("exchange_set") != "" || q.Get("exchange") != "" {
		f.Exchange, f.ExchangeSet = q.Get("exchange"), true
	}
	f.Before, _ = strconv.ParseInt(q.Get("before"), 10, 64)
	return f
}

func (s *Server) search(w http.ResponseWriter, r *http.Request) {
	f := readSearch(r.URL.Query())
	d := searchData{Form: f}
	query, args, err := buildSearch(f)
	if err != nil {
		d.Error = err.Error()
		s.render(w, r, "search", page{Title: "Search", Nav: "search", Data: d})
		return
	}
	rows, err := s.cfg.Pool.Query(r.Context(), query, args...)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var published, dead *time.Time
	var fr foundRow
	_, err = pgx.ForEachRow(rows, []any{&fr.ID, &fr.MessageID, &fr.Exchange, &fr.RoutingKey, &fr.Key, &fr.Attempts,
		&fr.LastError, &fr.CreatedAt, &published, &dead}, func() error {
		fr.State = state(published, dead, fr.Attempts)
		d.Rows = append(d.Rows, fr)
		return nil
	})
	if err != nil {
		d.Error = err.Error()
	}
	if len(d.Rows) > searchPage {
		d.Rows = d.Rows[:searchPage]
		q := r.URL.Query()
		q.Set("before", strconv.FormatInt(d.Rows[len(d.Rows)-1].ID, 10))
		d.Next = q.Encode()
	}
	s.render(w, r, "search", page{Title: "Search", Nav: "search", Data: d})
}

// isUUID reports whether s is a UUID in its text form (hex digits and
// dashes, 8-4-4-4-12), so the database's cast cannot fail.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if r != '-' {
				return false
			}
		} else if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return false
		}
	}
	return true
}
