package testenv

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// CommittedRow is one committed outbox row as the checker judges it.
type CommittedRow struct {
	ID          int64
	MessageID   string
	OrderingKey string // "" for an unkeyed row
	CreatedAt   time.Time
	PublishedAt time.Time // zero while unpublished
	Attempts    int
	Dead        bool
}

// Arrival is one delivery, in the order the consumer received them.
type Arrival struct {
	MessageID string
	At        time.Time
}

// History is what a Jepsen-style check judges: every committed row and every
// delivery, in arrival order.
type History struct {
	Rows     []CommittedRow
	Arrivals []Arrival
}

// Verdict classifies a history. Every committed row is exactly one of lost,
// delivered once or duplicated.
type Verdict struct {
	Committed  int
	Lost       int // committed, never delivered
	Once       int // delivered exactly once
	Duplicated int // delivered more than once
	// ExtraCopies is deliveries beyond the first of each row.
	ExtraCopies int
	// Unknown is deliveries of message ids that no committed row has.
	Unknown int
	// OrderViolations counts, per ordering key, rows whose first arrival
	// came after the first arrival of a later row (higher id) of the key.
	OrderViolations int
	Keys            int
	// ViolationNotes describe the first violations (at most 5): the key,
	// the late row and the later row it followed, with their first
	// arrival, copies and publication times, for reading a failure.
	ViolationNotes []string
	// LongestStall is the longest time during which some committed row was
	// pending (created, not yet published) and none was published; it ends
	// at StallEnd. Measured on the database's clock (created_at,
	// published_at).
	LongestStall time.Duration
	StallEnd     time.Time
	// Charged is rows with attempts > 0; Dead is rows parked dead.
	Charged int
	Dead    int
}

func (v Verdict) String() string {
	return fmt.Sprintf("committed %d: lost %d, once %d, duplicated %d (%d extra copies), unknown %d; "+
		"order violations %d over %d keys; longest stall %.1fs; charged %d, dead %d",
		v.Committed, v.Lost, v.Once, v.Duplicated, v.ExtraCopies, v.Unknown,
		v.OrderViolations, v.Keys, v.LongestStall.Seconds(), v.Charged, v.Dead)
}

// Check judges h.
func Check(h History) Verdict {
	v := Verdict{Committed: len(h.Rows)}
	byMsg := make(map[string]*CommittedRow, len(h.Rows))
	for i := range h.Rows {
		r := &h.Rows[i]
		byMsg[r.MessageID] = r
		if r.Attempts > 0 {
			v.Charged++
		}
		if r.Dead {
			v.Dead++
		}
	}
	copies := make(map[string]int, len(h.Rows))
	var first []string // committed message ids by first arrival
	firstAt := make(map[string]time.Time, len(h.Rows))
	for _, a := range h.Arrivals {
		if _, ok := byMsg[a.MessageID]; !ok {
			v.Unknown++
			continue
		}
		copies[a.MessageID]++
		if copies[a.MessageID] == 1 {
			first = append(first, a.MessageID)
			firstAt[a.MessageID] = a.At
		}
	}
	for _, r := range h.Rows {
		switch n := copies[r.MessageID]; {
		case n == 0:
			v.Lost++
		case n == 1:
			v.Once++
		default:
			v.Duplicated++
			v.ExtraCopies += n - 1
		}
	}
	describe := func(m string, pos int) string {
		r := byMsg[m]
		return fmt.Sprintf("row %d (first arrival #%d at %s, %d copies, published_at %s)",
			r.ID, pos, firstAt[m].Format("15:04:05.000"), copies[m], r.PublishedAt.Format("15:04:05.000"))
	}
	v.OrderViolations, v.Keys = orderViolations(first, func(m string) (string, int64, bool) {
		r := byMsg[m]
		return r.OrderingKey, r.ID, r.OrderingKey != ""
	}, func(key string, latePos int, after string, afterPos int) {
		if len(v.ViolationNotes) < 5 {
			v.ViolationNotes = append(v.ViolationNotes,
				fmt.Sprintf("key %q: %s after %s", key, describe(first[latePos], latePos), describe(after, afterPos)))
		}
	})
	v.LongestStall, v.StallEnd = longestStall(h.Rows)
	return v
}

// orderViolations walks message ids in order of first arrival; lookup gives
// a message's ordering key and row id (ok false: unkeyed or unknown). A
// message whose id is below one already seen for its key is a violation;
// note, when not nil, hears of each: the key, the late message's position,
// and the message with the key's highest id seen before it and its
// position.
func orderViolations(firstArrivals []string, lookup func(string) (key string, id int64, ok bool),
	note func(key string, latePos int, after string, afterPos int)) (violations, keys int) {
	type seen struct {
		id  int64
		msg string
		pos int
	}
	highest := map[string]seen{}
	for pos, m := range firstArrivals {
		key, id, ok := lookup(m)
		if !ok {
			continue
		}
		if h, found := highest[key]; found && id < h.id {
			violations++
			if note != nil {
				note(key, pos, h.msg, h.pos)
			}
			continue
		}
		highest[key] = seen{id, m, pos}
	}
	return violations, len(highest)
}

// longestStall is the longest gap between consecutive publications (and
// between the first row's creation and the first publication) during which a
// row created before the gap was still unpublished. Unpublished rows are
// left out: they are lost or pending, which the caller reports.
func longestStall(rows []CommittedRow) (time.Duration, time.Time) {
	var pub []CommittedRow
	for _, r := range rows {
		if !r.PublishedAt.IsZero() {
			pub = append(pub, r)
		}
	}
	if len(pub) == 0 {
		return 0, time.Time{}
	}
	slices.SortFunc(pub, func(a, b CommittedRow) int { return a.PublishedAt.Compare(b.PublishedAt) })
	// minCreated[i]: the earliest creation among rows published at or
	// after pub[i]: the row pending longest at that point.
	minCreated := make([]time.Time, len(pub))
	minCreated[len(pub)-1] = pub[len(pub)-1].CreatedAt
	for i := len(pub) - 2; i >= 0; i-- {
		minCreated[i] = minCreated[i+1]
		if pub[i].CreatedAt.Before(minCreated[i]) {
			minCreated[i] = pub[i].CreatedAt
		}
	}
	var longest time.Duration
	var end time.Time
	for i := range pub {
		// The gap before pub[i]: it starts at the previous publication,
		// or, when a row was created later than that, at its creation.
		start := minCreated[i]
		if i > 0 && pub[i-1].PublishedAt.After(start) {
			start = pub[i-1].PublishedAt
		}
		if gap := pub[i].PublishedAt.Sub(start); gap > longest {
			longest, end = gap, pub[i].PublishedAt
		}
	}
	return longest, end
}

// committedRowsQuery reads what the checker needs from the outbox.
const committedRowsQuery = `SELECT id, message_id::text, coalesce(ordering_key, ''), created_at,
	coalesce(published_at, 'epoch'::timestamptz), attempts, dead_at IS NOT NULL FROM outbox`

// CommittedRows reads every row of the outbox in pool's search_path.
func CommittedRows(t testing.TB, pool *pgxpool.Pool) []CommittedRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), committedRowsQuery)
	if err != nil {
		t.Fatal(err)
	}
	var out []CommittedRow
	var r CommittedRow
	if _, err := pgx.ForEachRow(rows, []any{&r.ID, &r.MessageID, &r.OrderingKey, &r.CreatedAt, &r.PublishedAt, &r.Attempts, &r.Dead}, func() error {
		if r.PublishedAt.Equal(time.Unix(0, 0)) {
			r.PublishedAt = time.Time{}
		}
		out = append(out, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(out, func(a, b CommittedRow) int { return cmp.Compare(a.ID, b.ID) })
	return out
}
