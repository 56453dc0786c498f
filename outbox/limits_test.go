package outbox

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// nested returns headers whose "h" holds depth containers, one inside the
// other ("[" for arrays, "{" for objects): the innermost at depth `depth`
// below the header table.
func nested(open string, depth int) string {
	var b strings.Builder
	b.WriteString(`{"h":`)
	for i := 0; i < depth; i++ {
		if open == "[" {
			b.WriteString("[")
		} else if i < depth-1 {
			b.WriteString(`{"k":`)
		} else {
			b.WriteString("{")
		}
	}
	for i := 0; i < depth; i++ {
		if open == "[" {
			b.WriteString("]")
		} else {
			b.WriteString("}")
		}
	}
	b.WriteString("}")
	return b.String()
}

// wideArray returns headers whose "h" is an array of n zeros.
func wideArray(n int) string {
	return `{"h":[` + strings.TrimSuffix(strings.Repeat("0,", n), ",") + `]}`
}

// wideObject returns an object of n members, at the top (depth 0) or as
// the value of "h" (depth 1).
func wideObject(n int, top bool) string {
	var b strings.Builder
	b.WriteString("{")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"k%d":0`, i)
	}
	b.WriteString("}")
	if top {
		return b.String()
	}
	return `{"h":` + b.String() + `}`
}

// stringOfSize returns headers {"h": "vvv..."} whose encoded table is
// exactly size bytes: 4 (table length) + 1+1 (name) + 5 (longstr type and
// length) + the value.
func stringOfSize(size int) string {
	return `{"h":"` + strings.Repeat("v", size-11) + `"}`
}

func TestCheckProperties(t *testing.T) {
	t.Parallel()
	s255, s256 := strings.Repeat("e", 255), strings.Repeat("e", 256)
	cases := []struct {
		name             string
		exchange, rk, ct string
		field, limit     string // "" means valid
		msg              string
	}{
		{"all at 255 bytes", s255, s255, s255, "", "", ""},
		{"non-ASCII UTF-8 and printable ASCII", "börse ex", "a.b*#-_~ ", "text/plain; charset=utf-8", "", "", ""},
		{"empty exchange and content type", "", "k", "", "", "", ""},
		{"exchange 256", s256, "k", "", "exchange", "length", "exchange: 256 bytes, over the 255-byte limit of an AMQP short string"},
		{"routing key 256", "", s256, "", "routing_key", "length", "routing_key: 256 bytes, over the 255-byte limit"},
		{"content type 256", "", "k", s256, "content_type", "length", "content_type: 256 bytes, over the 255-byte limit"},
		{"multi-byte counted in bytes", strings.Repeat("é", 128), "k", "", "exchange", "length", "exchange: 256 bytes"},
		{"exchange 0x1f", "ex\x1f", "k", "", "exchange", "control", "exchange: control character 0x1f at byte 2"},
		{"exchange 0x7f", "ex\x7f", "k", "", "exchange", "control", "control character 0x7f"},
		{"exchange 0x01", "\x01", "k", "", "exchange", "control", "control character 0x01 at byte 0"},
		{"routing key newline", "", "a\nb", "", "routing_key", "control", "routing_key: control character 0x0a"},
		{"content type tab", "", "k", "text/plain;\tq=1", "content_type", "control", "content_type: control character 0x09"},
		{"exchange not UTF-8", "\xff", "k", "", "exchange", "utf8", "exchange: not valid UTF-8"},
		{"content type not UTF-8", "", "k", "text/\xc3", "content_type", "utf8", "not valid UTF-8"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			checkLimitErr(t, CheckProperties(tc.exchange, tc.rk, tc.ct), tc.field, tc.limit, tc.msg)
		})
	}
}

func TestDecodeHeadersLimits(t *testing.T) {
	t.Parallel()
	name255, name256 := strings.Repeat("n", 255), strings.Repeat("n", 256)
	cases := []struct {
		name     string
		in       string
		frameMax int
		limit    string // "" means valid
		msg      string
	}{
		{"name 255", `{"` + name255 + `":1}`, 0, "", ""},
		{"name 256", `{"` + name256 + `":1}`, 0, "name", `headers: name "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"... is 256 bytes, over the 255-byte limit`},
		{"nested name 256", `{"o":{"` + name256 + `":1}}`, 0, "name", "is 256 bytes"},
		{"top table 8192 entries", wideObject(8192, true), 0, "", ""},
		{"top table 8193 entries", wideObject(8193, true), 0, "width", "headers: 8,193 headers, over the limit of 8,192 entries in one table"},
		{"nested table 8192 entries", wideObject(8192, false), 0, "", ""},
		{"nested table 8193 entries", wideObject(8193, false), 0, "width", `"h" has 8,193 entries, over the limit of 8,192`},
		{"array 8192 elements", wideArray(8192), 0, "", ""},
		{"array 8193 elements", wideArray(8193), 0, "width", `"h" has 8,193 entries`},
		{"arrays 32 deep", nested("[", 32), 0, "", ""},
		{"arrays 33 deep", nested("[", 33), 0, "depth", "nests tables and arrays 33 deep, over the limit of 32"},
		{"tables 32 deep", nested("{", 32), 0, "", ""},
		{"tables 33 deep", nested("{", 33), 0, "depth", "33 deep"},
		{"table at exactly the budget", stringOfSize(MaxHeaderTableBytes), 0, "", ""},
		{"table one byte over the budget", stringOfSize(MaxHeaderTableBytes + 1), 0, "size",
			`headers: "h" makes the header table 129,725 bytes, over the 129,724-byte budget for frame_max 131,072`},
		{"budget of a negotiated frame_max", stringOfSize(HeaderTableBudget(4096)), 4096, "", ""},
		{"over the budget of a negotiated frame_max", stringOfSize(HeaderTableBudget(4096) + 1), 4096, "size",
			"table 2,749 bytes, over the 2,748-byte budget for frame_max 4,096"},
		{"the largest header is named", `{"a":"x","big":"` + strings.Repeat("v", 200000) + `","z":1}`, 0, "size",
			`headers: "big" makes the header table 200,032 bytes, over the 129,724-byte budget`},
		{"largest double", `{"n":1.7976931348623157e308}`, 0, "", ""},
		{"number beyond a double", `{"n":1e400}`, 0, "value", `headers: "n": number 1e400 is out of the range of a double`},
		{"negative number beyond a double", `{"o":{"n":[-1e400]}}`, 0, "value", `"o.n[0]": number -1e400`},
		{"not an object", `[1,2]`, 0, "json", "headers: must be a JSON object"},
		{"trailing value", `{"a":1} {"b":2}`, 0, "json", "trailing data"},
		{"trailing brace", `{"a":1}}`, 0, "json", "trailing data"},
		{"broken JSON", `{"bad`, 0, "json", "headers: "},
		{"trailing space is fine", "{\"a\":1}\n ", 0, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := DecodeHeaders([]byte(tc.in), tc.frameMax)
			field := ""
			if tc.limit != "" {
				field = "headers"
			}
			checkLimitErr(t, err, field, tc.limit, tc.msg)
		})
	}
}

func checkLimitErr(t *testing.T, err error, field, limit, msg string) {
	t.Helper()
	if field == "" {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	var le *LimitError
	if !errors.As(err, &le) {
		t.Fatalf("error %v, want a *LimitError", err)
	}
	if le.Field != field || le.Limit != limit || !strings.Contains(err.Error(), msg) {
		t.Fatalf("error %q (field %s, limit %s), want field %s, limit %s, containing %q", err, le.Field, le.Limit, field, limit, msg)
	}
}

// TestHeaderTableSize pins the encoding arithmetic on a document with
// every JSON type, counted by hand from amqp091-go's writeTable and
// writeField (relay tests compare with amqp091-go itself).
func TestHeaderTableSize(t *testing.T) {
	t.Parallel()
	// 4 (table length)
	// + "a": 1+1 name, 'S' 1+4+2            =  9
	// + "b": 1+1 name, 'A' 1+4 + 9+9+2+1+5  = 33
	// + "c": 1+1 name, 'F' 1+4 + (1+1+9)    = 18
	const doc = `{"a":"xy","b":[1,2.5,true,null,{}],"c":{"d":-1}}`
	size, err := HeaderTableSize([]byte(doc))
	if err != nil || size != 64 {
		t.Fatalf("size %d, err %v, want 64", size, err)
	}
	obj, err := DecodeHeaders([]byte(doc), 0)
	if err != nil {
		t.Fatal(err)
	}
	b := obj["b"].([]any)
	if _, ok := b[0].(int64); !ok {
		t.Errorf("1 decoded as %T, want int64", b[0])
	}
	if _, ok := b[1].(float64); !ok {
		t.Errorf("2.5 decoded as %T, want float64", b[1])
	}
	if v, err := DecodeHeaders([]byte(`{"n":12345678901234567890}`), 0); err != nil || v["n"] != 12345678901234567890.0 {
		t.Errorf("integer beyond int64: %#v, %v; want a float64", v, err)
	}
	for _, empty := range []string{"", "{}", " { } "} {
		if v, err := DecodeHeaders([]byte(empty), 0); v != nil || err != nil {
			t.Errorf("DecodeHeaders(%q) = %v, %v; want nil, nil", empty, v, err)
		}
	}
}

func TestHeaderTableBudget(t *testing.T) {
	t.Parallel()
	if MaxHeaderTableBytes != 129724 || HeaderTableBudget(0) != MaxHeaderTableBytes || HeaderTableBudget(DefaultFrameMax) != MaxHeaderTableBytes {
		t.Fatalf("budget %d / %d, want 129724", MaxHeaderTableBytes, HeaderTableBudget(0))
	}
	if got := HeaderTableBudget(1 << 20); got != 1<<20-1348 {
		t.Fatalf("budget at 1 MiB: %d", got)
	}
}

func TestHasEscapedNUL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]bool{
		`{"a":"\u0000"}`:     true,
		`{"a":"x\\\u0000"}`:  true, // an escaped backslash, then the escape
		`{"a":"\\u0000"}`:    false,
		`{"a":"\\\\u0000"}`:  false,
		`{"\u0000":1}`:       true,
		`{"a":"\u00001"}`:    true,
		`{"a":"u0000\\u00"}`: false,
	} {
		if got := hasEscapedNUL([]byte(in)); got != want {
			t.Errorf("hasEscapedNUL(%s) = %v, want %v", in, got, want)
		}
	}
}

func TestValidateHeaders(t *testing.T) {
	t.Parallel()
	zeros := make([]int, 8193)
	cases := []struct {
		name    string
		headers map[string]any
		limit   string // "" means valid
	}{
		{"small", map[string]any{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, ""},
		{"wide slice", map[string]any{"ids": zeros}, "width"},
		{"struct values are JSON", map[string]any{"s": struct{ A int }{1}}, ""},
		{"too big", map[string]any{"big": strings.Repeat("v", 200000)}, "size"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := Message{RoutingKey: "k", Payload: []byte("x"), Headers: tc.headers}
			err := m.Validate()
			if tc.limit == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var le *LimitError
			if !errors.Is(err, ErrInvalidMessage) || !errors.As(err, &le) || le.Limit != tc.limit {
				t.Fatalf("error %v, want ErrInvalidMessage and a %s LimitError", err, tc.limit)
			}
		})
	}
	m := Message{RoutingKey: "k", Payload: []byte("x"), Headers: map[string]any{"nul": "a\x00b"}}
	if err := m.Validate(); !errors.Is(err, ErrInvalidMessage) || !strings.Contains(err.Error(), "U+0000") {
		t.Fatalf("NUL in a header: %v", err)
	}
}

func TestGrouped(t *testing.T) {
	t.Parallel()
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 131072: "131,072", 1234567: "1,234,567", -4096: "-4,096"} {
		if got := grouped(n); got != want {
			t.Errorf("grouped(%d) = %q, want %q", n, got, want)
		}
	}
}
