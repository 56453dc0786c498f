package testenv

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	// row: id, key, created and published seconds (-1: unpublished).
	row := func(id int64, key string, created, published float64) CommittedRow {
		r := CommittedRow{ID: id, MessageID: string(rune('a' + id)), OrderingKey: key, CreatedAt: at(created)}
		if published >= 0 {
			r.PublishedAt = at(published)
		}
		return r
	}
	arrive := func(ids ...int64) []Arrival {
		var out []Arrival
		for _, id := range ids {
			out = append(out, Arrival{MessageID: string(rune('a' + id))})
		}
		return out
	}
	charged := func(r CommittedRow, attempts int, dead bool) CommittedRow {
		r.Attempts, r.Dead = attempts, dead
		return r
	}
	tests := []struct {
		name     string
		h        History
		want     Verdict
		wantNote string // in the first of want's ViolationNotes
	}{
		{
			name: "each row once, in order",
			h:    History{Rows: []CommittedRow{row(1, "k", 0, 1), row(2, "k", 0, 1), row(3, "", 0, 2)}, Arrivals: arrive(1, 2, 3)},
			want: Verdict{Committed: 3, Once: 3, Keys: 1, LongestStall: time.Second, StallEnd: at(1)},
		},
		{
			name: "lost, duplicated and unknown",
			h: History{Rows: []CommittedRow{row(1, "", 0, 0), row(2, "", 0, 0), row(3, "", 0, -1)},
				Arrivals: append(arrive(1, 2, 2, 2), Arrival{MessageID: "not-a-row"})},
			want: Verdict{Committed: 3, Lost: 1, Once: 1, Duplicated: 1, ExtraCopies: 2, Unknown: 1},
		},
		{
			name: "order judged by first arrival: a late duplicate of an earlier row is no violation",
			h:    History{Rows: []CommittedRow{row(1, "k", 0, 0), row(2, "k", 0, 0)}, Arrivals: arrive(1, 2, 1)},
			want: Verdict{Committed: 2, Once: 1, Duplicated: 1, ExtraCopies: 1, Keys: 1},
		},
		{
			name: "an overtake per key; other keys and unkeyed rows do not count",
			h: History{Rows: []CommittedRow{row(1, "a", 0, 0), row(2, "a", 0, 0), row(3, "a", 0, 0), row(4, "b", 0, 0), row(5, "", 0, 0), row(6, "b", 0, 0)},
				Arrivals: arrive(3, 1, 2, 6, 4, 5)},
			want:     Verdict{Committed: 6, Once: 6, OrderViolations: 3, Keys: 2},
			wantNote: `key "a": row 1 (first arrival #1`,
		},
		{
			name: "stall: a gap in publications while a row waits",
			h:    History{Rows: []CommittedRow{row(1, "", 0, 1), row(2, "", 0.5, 40), row(3, "", 30, 41)}, Arrivals: arrive(1, 2, 3)},
			want: Verdict{Committed: 3, Once: 3, LongestStall: 39 * time.Second, StallEnd: at(40)},
		},
		{
			name: "no stall while nothing is pending: an idle gap starts at the next row's creation",
			h:    History{Rows: []CommittedRow{row(1, "", 0, 1), row(2, "", 60, 62), row(3, "", 61, 62.5)}, Arrivals: arrive(1, 2, 3)},
			want: Verdict{Committed: 3, Once: 3, LongestStall: 2 * time.Second, StallEnd: at(62)},
		},
		{
			name: "charged and dead rows",
			h: History{Rows: []CommittedRow{charged(row(1, "", 0, 0), 2, false), charged(row(2, "", 0, -1), 10, true), row(3, "", 0, 0)},
				Arrivals: arrive(1, 3)},
			want: Verdict{Committed: 3, Lost: 1, Once: 2, Charged: 2, Dead: 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := Check(tc.h)
			notes := got.ViolationNotes
			got.ViolationNotes = nil
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Check:\n got %+v\nwant %+v", got, tc.want)
			}
			if len(notes) != min(got.OrderViolations, 5) {
				t.Errorf("%d violation notes for %d violations: %q", len(notes), got.OrderViolations, notes)
			}
			if tc.wantNote != "" && (len(notes) == 0 || !strings.Contains(notes[0], tc.wantNote)) {
				t.Errorf("first violation note %q, want it to say %q", notes, tc.wantNote)
			}
		})
	}
}
