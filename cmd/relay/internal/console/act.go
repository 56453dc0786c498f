package console

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/relay"
)

// act runs requeue, retry or discard on the row ids posted, through the
// relay package's functions and relay.Audited, as the CLI does. The
// database role decides whether it may: a read-only role's request fails
// there (permission denied, 403) whatever the request holds.
func (s *Server) act(w http.ResponseWriter, r *http.Request) {
	if !s.checkCSRF(r) {
		http.Error(w, "missing or stale form token: reload the page", http.StatusForbidden)
		return
	}
	var ids []int64
	for _, v := range r.PostForm["id"] {
		id, err := strconv.ParseInt(v, 10, 64)
		if err != nil || id < 1 {
			http.Error(w, "bad row id", http.StatusBadRequest)
			return
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		http.Error(w, "no row id", http.StatusBadRequest)
		return
	}
	action := r.PostFormValue("action")
	var run func(tx pgx.Tx) (int64, error)
	ctx := r.Context()
	switch action {
	case "requeue":
		run = func(tx pgx.Tx) (int64, error) { done, err := relay.Requeue(ctx, tx, ids); return int64(len(done)), err }
	case "retry":
		run = func(tx pgx.Tx) (int64, error) {
			done, err := relay.RetryNow(ctx, tx, ids)
			return int64(len(done)), err
		}
	case "discard":
		run = func(tx pgx.Tx) (int64, error) { gone, err := relay.Discard(ctx, tx, ids); return int64(len(gone)), err }
	default:
		http.Error(w, "unknown action", http.StatusBadRequest)
		return
	}
	var n int64
	err := relay.Audited(ctx, s.cfg.Pool, "console", action, map[string]any{"ids": ids}, func(tx pgx.Tx) (int64, error) {
		var err error
		n, err = run(tx)
		return n, err
	})
	var refused *relay.RefusedError
	if err != nil && !errors.As(err, &refused) {
		s.fail(w, r, err)
		return
	}
	notice := fmt.Sprintf("%s: %d of %d row(s)", action, n, len(ids))
	if refused != nil {
		notice += "; " + refused.Error()
	}
	s.render(w, r, "error", page{Title: "Done", Notice: notice})
}

// replay runs relay.Replay with the posted filter. It returns when the
// copies are inserted and published; the page then says how many.
func (s *Server) replay(w http.ResponseWriter, r *http.Request) {
	if !s.checkCSRF(r) {
		http.Error(w, "missing or stale form token: reload the page", http.StatusForbidden)
		return
	}
	var o relay.ReplayOptions
	var err error
	f := &o.Filter
	parseID := func(name string) int64 {
		v := strings.TrimSpace(r.PostFormValue(name))
		if v == "" || err != nil {
			return 0
		}
		n, e := strconv.ParseInt(v, 10, 64)
		if e != nil || n < 1 {
			err = fmt.Errorf("%s: %q is not a row id", name, v)
		}
		return n
	}
	f.FromID, f.ToID = parseID("from_id"), parseID("to_id")
	for _, t := range []struct {
		name string
		dst  *relay.ReplayFilter
	}{{"since", f}, {"until", f}} {
		v := r.PostFormValue(t.name)
		if v == "" || err != nil {
			continue
		}
		at, e := parseTime(v)
		if e != nil {
			err = e
			continue
		}
		if t.name == "since" {
			f.Since = at
		} else {
			f.Until = at
		}
	}
	f.OrderingKey, f.RoutingKey = r.PostFormValue("key"), r.PostFormValue("routing_key")
	if ex := r.PostFormValue("exchange"); ex != "" || r.PostFormValue("exchange_set") != "" {
		f.Exchange = &ex
	}
	switch r.PostFormValue("message_ids") {
	case "same":
		o.SameID = true
	case "new":
	default:
		err = errors.Join(err, errors.New("choose same or new message ids"))
	}
	if err == nil && f.Empty() {
		err = relay.ErrEmptyFilter
	}
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		s.render(w, r, "error", page{Title: "Replay", Error: err.Error()})
		return
	}
	o.Via, o.Batch, o.Rate = "console", 100, 1000
	res, err := relay.Replay(r.Context(), s.cfg.Pool, o)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, "error", page{Title: "Replay", Notice: fmt.Sprintf("replayed %d row(s), all published (audit entry %d)", res.Copied, res.AuditID)})
}
