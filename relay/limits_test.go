package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/outbox"
)

func TestRowLimits(t *testing.T) {
	t.Parallel()
	const maxPayload = 1 << 20
	type row struct {
		exchange, routingKey, contentType, headers string
		payloadLen, frameMax                       int
	}
	ok := row{exchange: "orders", routingKey: "order.created", contentType: "application/json", headers: `{"h":1}`}
	with := func(f func(r *row)) row { r := ok; f(&r); return r }
	budget4k := outbox.HeaderTableBudget(4096)
	cases := []struct {
		name   string
		row    row
		reason string // "" means publishable
		msg    string
	}{
		{"publishable", ok, "", ""},
		{"exchange of 300 bytes", with(func(r *row) { r.exchange = "x" + strings.Repeat("e", 299) }), reasonBadProperty,
			"exchange: 300 bytes, over the 255-byte limit of an AMQP short string"},
		{"routing key of 256 bytes", with(func(r *row) { r.routingKey = strings.Repeat("k", 256) }), reasonBadProperty, "routing_key: 256 bytes"},
		{"content type of 300 bytes", with(func(r *row) { r.contentType = strings.Repeat("t", 300) }), reasonBadProperty, "content_type: 300 bytes"},
		{"exchange with an escape", with(func(r *row) { r.exchange = "ex\x1b[2J" }), reasonBadProperty, "exchange: control character 0x1b"},
		{"payload at the limit", with(func(r *row) { r.payloadLen = maxPayload }), "", ""},
		{"payload over the limit", with(func(r *row) { r.payloadLen = maxPayload + 1 }), reasonTooLarge,
			"payload is 1048577 bytes, over max_payload_bytes 1048576"},
		{"header of 200 KB", with(func(r *row) { r.headers = `{"big":"` + strings.Repeat("v", 200000) + `"}` }), reasonTooLarge,
			`headers: "big" makes the header table 200,013 bytes, over the 129,724-byte budget for frame_max 131,072`},
		{"array of 9,000", with(func(r *row) { r.headers = `{"a":[` + strings.TrimSuffix(strings.Repeat("1,", 9000), ",") + `]}` }), reasonBadHeaders,
			`headers: "a" has 9,000 entries, over the limit of 8,192`},
		{"33 deep", with(func(r *row) { r.headers = `{"d":` + strings.Repeat("[", 33) + strings.Repeat("]", 33) + `}` }), reasonBadHeaders,
			"33 deep, over the limit of 32"},
		{"not an object", with(func(r *row) { r.headers = `[]` }), reasonBadHeaders, "headers: must be a JSON object"},
		{"fits the default frame_max", with(func(r *row) { r.headers = `{"h":"` + strings.Repeat("v", budget4k) + `"}` }), "", ""},
		{"too big for a negotiated frame_max of 4,096", with(func(r *row) {
			r.headers, r.frameMax = `{"h":"`+strings.Repeat("v", budget4k)+`"}`, 4096
		}), reasonTooLarge, "over the 2,748-byte budget for frame_max 4,096"},
		{"the property is judged first", with(func(r *row) { r.exchange, r.headers = "\n", `[]` }), reasonBadProperty, "exchange:"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := tc.row
			tab, err := checkRow(r.exchange, r.routingKey, r.contentType, []byte(r.headers), r.payloadLen, maxPayload, r.frameMax, outbox.AMQPProperties{})
			if tc.reason == "" {
				if err != nil || tab == nil {
					t.Fatalf("checkRow: %v, %v; want a table", tab, err)
				}
				return
			}
			if !errors.Is(err, errPoison) || poisonReason(err) != tc.reason || !strings.Contains(err.Error(), tc.msg) || tab != nil {
				t.Fatalf("checkRow: %v (reason %q), want errPoison with reason %s containing %q", err, poisonReason(err), tc.reason, tc.msg)
			}
		})
	}
	if poisonReason(errors.New("other")) != "" {
		t.Error("poisonReason of a plain error")
	}
	if _, err := checkRow("", "k", "", []byte(`{"a":[1]}`), 1, 0, 0, outbox.AMQPProperties{}); err != nil {
		t.Errorf("no payload limit: %v", err)
	}
}

// TestRowLimitsFitNegotiatedFrame: the largest header table checkRow
// accepts at a negotiated frame_max is read back by an amqp091-go
// consumer on a connection with that frame_max, with HeaderSlack to spare.
func TestRowLimitsFitNegotiatedFrame(t *testing.T) {
	t.Parallel()
	for _, frameMax := range []int{4096, 65536, outbox.DefaultFrameMax} {
		raw := []byte(`{"h":"` + strings.Repeat("v", outbox.HeaderTableBudget(frameMax)-11) + `"}`)
		tab, err := checkRow("ex", "k", strings.Repeat("c", 255), raw, 2, 0, frameMax, outbox.AMQPProperties{})
		if err != nil {
			t.Fatalf("frame_max %d: %v", frameMax, err)
		}
		checkRoundTrip(t, newLoopback(t, frameMax), tab, frameMax)
		if _, err := checkRow("ex", "k", "c", append(raw[:len(raw)-2:len(raw)-2], `v"}`...), 2, 0, frameMax, outbox.AMQPProperties{}); poisonReason(err) != reasonTooLarge {
			t.Fatalf("frame_max %d: one byte over the budget: %v", frameMax, err)
		}
	}
	// What the loopback reads back is the relay's mapping: int64 and
	// float64 numbers, nested tables.
	tab, err := checkRow("", "k", "", []byte(`{"n":1,"f":1.5,"o":{"a":[true,null]}}`), 0, 0, 0, outbox.AMQPProperties{})
	if err != nil {
		t.Fatal(err)
	}
	want := amqp.Table{"n": int64(1), "f": 1.5, "o": amqp.Table{"a": []any{true, nil}}}
	if !equalTable(tab, want) {
		t.Fatalf("table %#v, want %#v", tab, want)
	}
}

// A write that fails on a cut socket comes back from amqp091-go as raw as an
// encoding failure; only the second may park the row (the fault suite's
// connection cuts once parked a row "unencodable" on a reset).
func TestEncodeFailureIsNotASocketError(t *testing.T) {
	socket := []error{
		&net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.ECONNRESET)},
		fmt.Errorf("flush: %w", syscall.EPIPE),
		net.ErrClosed,
		io.ErrUnexpectedEOF,
		os.ErrDeadlineExceeded,
		amqp.ErrClosed,
	}
	for _, err := range socket {
		if encodeFailure(err) {
			t.Errorf("%v (%T) taken for an encoding failure", err, err)
		}
	}
	encoding := []error{
		errors.New(`amqp: shortstr "xxx" exceeds 255 bytes`),
		amqp.ErrFieldType,
		fmt.Errorf("table field %q %w", "k", amqp.ErrFieldType),
	}
	for _, err := range encoding {
		if !encodeFailure(err) {
			t.Errorf("%v (%T) not taken for an encoding failure", err, err)
		}
	}
}

// An exchange check blames its row only for what the row put on the wire.
func TestCheckBlamesRowOnlyForWhatItSent(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{errors.New(`amqp: shortstr "eee" exceeds 255 bytes`), true},
		{&amqp.Error{Code: amqp.FrameError, Reason: "FRAME_ERROR", Server: true}, true},
		{&amqp.Error{Code: amqp.FrameError, Reason: "write tcp: connection reset by peer", Server: false}, false},
		{&amqp.Error{Code: amqp.ConnectionForced, Reason: "CONNECTION_FORCED - broker forced connection closure", Server: true}, false},
		{&amqp.Error{Code: amqp.AccessRefused, Reason: "ACCESS_REFUSED", Server: true, Recover: true}, false}, // soft, as amqp091-go builds it
		{&net.OpError{Op: "write", Net: "tcp", Err: syscall.ECONNRESET}, false},
		{amqp.ErrClosed, false},
	}
	for _, c := range cases {
		if got := checkBlamesRow(c.err); got != c.want {
			t.Errorf("checkBlamesRow(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
