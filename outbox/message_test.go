package outbox

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("k", 256)
	cases := []struct {
		name string
		msg  Message
		want string // "" means valid
	}{
		{"minimal", Message{RoutingKey: "orders", Payload: []byte("{}")}, ""},
		{"empty payload is fine", Message{RoutingKey: "orders", Payload: []byte{}}, ""},
		{"explicit uuid", Message{RoutingKey: "o", Payload: []byte("x"), MessageID: "7d444840-9dc0-11d1-b245-5ffdce74fad2"}, ""},
		{"empty routing key", Message{Payload: []byte("x")}, "routing key is empty"},
		{"long routing key", Message{RoutingKey: long, Payload: []byte("x")}, "routing_key: 256 bytes, over the 255-byte limit"},
		{"long exchange", Message{Exchange: long, RoutingKey: "k", Payload: []byte("x")}, "exchange: 256 bytes, over the 255-byte limit"},
		{"nil payload", Message{RoutingKey: "k"}, "payload is nil"},
		{"bad message id", Message{RoutingKey: "k", Payload: []byte("x"), MessageID: "order-1"}, `message id "order-1" is not a UUID`},
		{"invalid utf8 key", Message{RoutingKey: "\xff", Payload: []byte("x")}, "routing_key: not valid UTF-8"},
		{"long header name", Message{RoutingKey: "k", Payload: []byte("x"), Headers: map[string]any{long: 1}}, "headers: name \"kkkk"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.msg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidMessage) {
				t.Fatalf("error %v, want ErrInvalidMessage containing %q", err, tc.want)
			}
		})
	}
}

func TestRowDefaults(t *testing.T) {
	t.Parallel()
	r, err := (&Message{RoutingKey: "k", Payload: []byte("x"), Headers: map[string]any{"a": 1}}).row()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.messageID) != 36 || r.contentType != DefaultContentType || string(r.headers) != `{"a":1}` || r.orderingKey != nil || r.availableAt != nil {
		t.Fatalf("unexpected row %+v", r)
	}
	if _, err := (&Message{RoutingKey: "k", Payload: []byte("x"), Headers: map[string]any{"f": func() {}}}).row(); !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("unencodable header: got %v", err)
	}
}
