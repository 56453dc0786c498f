package relay

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestDecodeHeaders(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in      string
		want    amqp.Table
		wantErr bool
	}{
		{`{}`, nil, false},
		{``, nil, false},
		{`{"s":"x","i":42,"f":1.5,"b":false,"n":null}`, amqp.Table{"s": "x", "i": int64(42), "f": 1.5, "b": false, "n": nil}, false},
		{`{"big":12345678901234567890}`, amqp.Table{"big": 12345678901234567890.0}, false},
		{`{"o":{"k":[1,"two"]}}`, amqp.Table{"o": amqp.Table{"k": []any{int64(1), "two"}}}, false},
		{`[1,2]`, nil, true},
		{`{"a":1} {"b":2}`, nil, true},
		{`{"bad`, nil, true},
		{`{"x":1e400}`, nil, true},
	}
	for _, tc := range cases {
		got, err := decodeHeaders([]byte(tc.in))
		if (err != nil) != tc.wantErr {
			t.Errorf("decodeHeaders(%s) error = %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if !tc.wantErr && !equalTable(got, tc.want) {
			t.Errorf("decodeHeaders(%s) = %#v, want %#v", tc.in, got, tc.want)
		}
	}
}

func equalTable(a, b amqp.Table) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !equalValue(v, b[k]) {
			return false
		}
	}
	return true
}

func equalValue(a, b any) bool {
	switch x := a.(type) {
	case amqp.Table:
		y, ok := b.(amqp.Table)
		return ok && equalTable(x, y)
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !equalValue(x[i], y[i]) {
				return false
			}
		}
		return true
	default:
		return a == b
	}
}

// FuzzDecodeHeaders: any input either fails cleanly or yields a table the
// AMQP client accepts.
func FuzzDecodeHeaders(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":[1,{"b":null}]}`, `{"x":1e308}`, `"str"`, `{"\u0000":true}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		tab, err := decodeHeaders(in)
		if err != nil {
			return
		}
		if err := tab.Validate(); err != nil {
			t.Fatalf("decoded table fails validation: %v", err)
		}
	})
}
