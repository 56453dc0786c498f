package relay

import (
	"strings"
	"testing"
)

// A batch is cut by what its rows cost once decoded: headers count as
// their text and their tree (headerTreeWeight), so rows whose headers
// are small as text but large as maps end the batch early, the first
// loaded row always stays, and the rows past the cut drop what was
// loaded for them.
func TestCutToBudget(t *testing.T) {
	t.Parallel()
	tables := []byte(`{"a": [` + strings.Repeat(`{}, `, 999) + `{}]}`) // 4,007 bytes of text
	if w := headerTreeWeight(tables); w < 64*1000 {
		t.Fatalf("headerTreeWeight of 1,000 empty tables: %d, under the ~64 KB they decode to", w)
	}
	if w := headerTreeWeight([]byte(`{}`)); w != 2 {
		t.Errorf("headerTreeWeight of {}: %d, want 2", w)
	}
	row := func(payload int, headers []byte) claimed {
		return claimed{payload: make([]byte, payload), headers: headers, extra: int64(len(headers))}
	}
	cases := []struct {
		name     string
		rows     []claimed
		maxBytes int64
		kept     int
	}{
		{"plain rows within the budget", []claimed{row(100, nil), row(100, nil), row(100, nil)}, 1000, 3},
		{"plain rows over it", []claimed{row(400, nil), row(400, nil), row(400, nil)}, 1000, 2},
		{"the tables' text fits, their tree does not", []claimed{row(10, tables), row(10, tables), row(10, tables)}, 200_000, 1},
		{"the first row stays alone over the budget", []claimed{row(10, tables), row(10, nil)}, 1000, 1},
		{"a row not loaded costs nothing", []claimed{row(100, nil), {size: 1 << 30}, row(100, nil)}, 1000, 3},
	}
	for _, c := range cases {
		cutToBudget(c.rows, c.maxBytes)
		kept := 0
		for i, r := range c.rows {
			if r.payload != nil || r.size > 0 {
				if kept != i {
					t.Errorf("%s: row %d kept after a cut row", c.name, i)
				}
				kept++
			} else if r.headers != nil {
				t.Errorf("%s: row %d cut but its headers kept", c.name, i)
			}
		}
		if kept != c.kept {
			t.Errorf("%s: %d rows kept, want %d", c.name, kept, c.kept)
		}
	}
}
