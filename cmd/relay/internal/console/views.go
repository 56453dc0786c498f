package console

import (
	"encoding/hex"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// Caps on what a page shows of one row.
const (
	payloadShown = 4096  // bytes of payload preview
	headersShown = 16384 // bytes of headers JSON
	fieldShown   = 512   // characters of a field in a list
	listRows     = 200   // rows of the failing and dead lists
	searchPage   = 50    // rows per search page
)

func parsePages() (map[string]*template.Template, error) {
	funcs := template.FuncMap{"show": show, "showAll": showAll, "exchange": exchangeName, "ts": ts, "ago": ago}
	pages := map[string]*template.Template{}
	for _, name := range []string{"login", "error", "overview", "keys", "failing", "dead", "search", "row", "audit"} {
		t, err := template.New(name).Funcs(funcs).ParseFS(webFS, "web/layout.html", "web/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// showAll makes every character of s visible: control characters (a
// terminal escape, a newline that would forge a line, a bidi override)
// become Go escapes. html/template escapes the rest for HTML.
func showAll(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == utf8.RuneError:
			b.WriteString(`\ufffd`)
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// show is showAll capped to fieldShown characters.
func show(s string) string {
	if utf8.RuneCountInString(s) > fieldShown {
		s = string([]rune(s)[:fieldShown]) + "…"
	}
	return showAll(s)
}

func exchangeName(ex string) string {
	if ex == "" {
		return "(default)"
	}
	return show(ex)
}

func ts(t any) string {
	switch v := t.(type) {
	case time.Time:
		if v.IsZero() {
			return "-"
		}
		return v.UTC().Format("2006-01-02 15:04:05.000Z")
	case *time.Time:
		if v == nil {
			return "-"
		}
		return ts(*v)
	}
	return "-"
}

func ago(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(time.Second).String()
}

// overviewData is the overview page.
type overviewData struct {
	Status    relay.Status
	Published int64 // published rows within retention (the planner's estimate on a large table)
	Estimated bool
	Chart     chart
}

// publishedCount estimates the published rows from the table's statistics
// (reltuples, kept by autovacuum and ANALYZE) less the rows pending and
// dead: an exact count would read every published row.
const publishedCount = `SELECT greatest(c.reltuples::bigint, 0) FROM pg_class c WHERE c.oid = 'outbox'::regclass`

// rateBuckets counts rows published per 10-second bucket over the last 10
// minutes. It reads outbox_created_at_idx for the rows created in the
// last hour (there is no index on published_at, which would cost every
// mark a second index update): a row created earlier and published in
// the window is not counted, so after a long outage the chart shows the
// new rows' rate, not the backlog's.
const rateBuckets = `
SELECT floor(extract(epoch FROM now() - published_at) / 10)::int AS b, count(*)
FROM outbox
WHERE created_at > now() - interval '1 hour' AND published_at > now() - interval '10 minutes'
GROUP BY b`

// chart is the publish-rate chart, drawn as SVG on the server (no script).
type chart struct {
	Bars  []bar
	Max   int64
	Width int
}

type bar struct {
	X, Y, H int
	N       int64
	Label   string
}

func (s *Server) overview(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	st, err := relay.ReadStatus(ctx, s.cfg.Pool)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d := overviewData{Status: st, Estimated: true}
	var est int64
	if err := s.cfg.Pool.QueryRow(ctx, publishedCount).Scan(&est); err != nil {
		s.fail(w, r, err)
		return
	}
	if est < 100_000 { // small: count exactly
		d.Estimated = false
		if err := s.cfg.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NOT NULL`).Scan(&d.Published); err != nil {
			s.fail(w, r, err)
			return
		}
	} else {
		d.Published = max(est-st.Pending-st.Dead, 0)
	}
	counts := make([]int64, 60)
	rows, err := s.cfg.Pool.Query(ctx, rateBuckets)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var b int
	var n int64
	if _, err := pgx.ForEachRow(rows, []any{&b, &n}, func() error {
		if b >= 0 && b < len(counts) {
			counts[len(counts)-1-b] = n
		}
		return nil
	}); err != nil {
		s.fail(w, r, err)
		return
	}
	d.Chart = drawChart(counts)
	s.render(w, r, "overview", page{Title: "Overview", Nav: "overview", Data: d})
}

// drawChart lays out one bar per 10-second bucket, oldest left, in a
// 600 x 120 SVG.
func drawChart(counts []int64) chart {
	c := chart{Width: 600}
	for _, n := range counts {
		c.Max = max(c.Max, n)
	}
	w := c.Width / len(counts)
	for i, n := range counts {
		h := 0
		if c.Max > 0 {
			h = int(n * 110 / c.Max)
		}
		secs := (len(counts) - i) * 10
		c.Bars = append(c.Bars, bar{X: i * w, Y: 120 - h, H: h, N: n,
			Label: fmt.Sprintf("%d published, %d-%ds ago (%.1f/s)", n, secs, secs-10, float64(n)/10)})
	}
	return c
}

// keysData is the keys page: ordering keys whose head waits, for a retry
// (held) or behind a dead row (blocked).
type keysData struct {
	Blocked []relay.BlockedKey
	Held    []relay.FailingRow
}

func (s *Server) keys(w http.ResponseWriter, r *http.Request) {
	blocked, err := relay.ListBlockedKeys(r.Context(), s.cfg.Pool, listRows)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	failing, err := relay.ListFailing(r.Context(), s.cfg.Pool, listRows)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d := keysData{Blocked: blocked}
	seen := map[string]bool{}
	for _, f := range failing {
		if f.OrderingKey != "" && !seen[f.OrderingKey] {
			seen[f.OrderingKey] = true // the key's first failing row holds it
			d.Held = append(d.Held, f)
		}
	}
	s.render(w, r, "keys", page{Title: "Held and blocked keys", Nav: "keys", Data: d})
}

func (s *Server) failing(w http.ResponseWriter, r *http.Request) {
	rows, err := relay.ListFailing(r.Context(), s.cfg.Pool, listRows)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, "failing", page{Title: "Failing rows", Nav: "failing", Data: rows})
}

func (s *Server) dead(w http.ResponseWriter, r *http.Request) {
	rows, err := relay.ListDead(r.Context(), s.cfg.Pool, listRows)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, "dead", page{Title: "Dead rows", Nav: "dead", Data: rows})
}

func (s *Server) audit(w http.ResponseWriter, r *http.Request) {
	before, _ := strconv.ParseInt(r.URL.Query().Get("before"), 10, 64)
	list, err := relay.ListAudit(r.Context(), s.cfg.Pool, before, searchPage)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var next int64
	if len(list) == searchPage {
		next = list[len(list)-1].ID
	}
	s.render(w, r, "audit", page{Title: "Audit", Nav: "audit", Data: struct {
		List []relay.AuditEntry
		Next int64
	}{list, next}})
}

// rowDetail is one row, everything it holds, capped for the page.
type rowDetail struct {
	ID                                                int64
	MessageID, Exchange, RoutingKey, ContentType, Key string
	Type, CorrelationID, ReplyTo, Expiration, AppID   string
	Priority                                          *int16
	CreatedAt, AvailableAt                            time.Time
	PublishedAt, DeadAt                               *time.Time
	Attempts                                          int
	LastError                                         string
	Suspected                                         bool
	ReplayOf                                          *int64
	State                                             string
	Headers                                           string
	HeadersCut                                        bool
	Payload                                           string
	PayloadHex                                        bool
	PayloadSize                                       int
	PayloadCut                                        bool
}

// rowQuery reads one row by primary key; the payload and headers are cut
// in the database, so a 16 MiB payload costs the console 4 KiB.
const rowQuery = `
SELECT id, message_id::text, exchange, routing_key, content_type, coalesce(ordering_key, ''),
       coalesce(type, ''), coalesce(correlation_id, ''), coalesce(reply_to, ''), coalesce(expiration, ''),
       coalesce(app_id, ''), priority, created_at, available_at, published_at, dead_at, attempts,
       coalesce(last_error, ''), suspected, replay_of,
       left(jsonb_pretty(headers), $2), octet_length(jsonb_pretty(headers)) > $2,
       substring(payload FROM 1 FOR $3), octet_length(payload)
FROM outbox WHERE id = $1`

func (s *Server) row(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	var d rowDetail
	var payload []byte
	err = s.cfg.Pool.QueryRow(r.Context(), rowQuery, id, headersShown, payloadShown).Scan(
		&d.ID, &d.MessageID, &d.Exchange, &d.RoutingKey, &d.ContentType, &d.Key,
		&d.Type, &d.CorrelationID, &d.ReplyTo, &d.Expiration, &d.AppID, &d.Priority,
		&d.CreatedAt, &d.AvailableAt, &d.PublishedAt, &d.DeadAt, &d.Attempts, &d.LastError, &d.Suspected, &d.ReplayOf,
		&d.Headers, &d.HeadersCut, &payload, &d.PayloadSize)
	if err == pgx.ErrNoRows {
		http.NotFound(w, r)
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d.PayloadCut = d.PayloadSize > len(payload)
	if utf8.Valid(payload) || d.PayloadCut && utf8.Valid(trimRune(payload)) {
		d.Payload = string(payload)
	} else {
		d.Payload, d.PayloadHex = hex.Dump(payload), true
	}
	d.State = state(d.PublishedAt, d.DeadAt, d.Attempts)
	s.render(w, r, "row", page{Title: fmt.Sprintf("Row %d", d.ID), Nav: "search", Data: d})
}

// trimRune drops a rune cut in two at the end of a capped payload.
func trimRune(b []byte) []byte {
	for i := 0; i < utf8.UTFMax && len(b) > 0; i++ {
		if utf8.Valid(b) {
			return b
		}
		b = b[:len(b)-1]
	}
	return b
}

func state(published, dead *time.Time, attempts int) string {
	switch {
	case published != nil:
		return "published"
	case dead != nil:
		return "dead"
	case attempts > 0:
		return "failing"
	}
	return "pending"
}
