package relay

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/outbox"
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
		{`{"w":[` + strings.TrimSuffix(strings.Repeat("0,", 8193), ",") + `]}`, nil, true},
		{`{"d":` + strings.Repeat("[", 33) + strings.Repeat("]", 33) + `}`, nil, true},
		{`{"` + strings.Repeat("n", 256) + `":1}`, nil, true},
		{`{"big":"` + strings.Repeat("v", 200000) + `"}`, nil, true},
	}
	for _, tc := range cases {
		got, err := decodeHeaders([]byte(tc.in))
		if (err != nil) != tc.wantErr {
			t.Errorf("decodeHeaders(%.60s) error = %v, want error %v", tc.in, err, tc.wantErr)
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
		w, ok := b[k]
		if !ok || !equalValue(v, w) {
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

// relayPublishing is a message with the properties the relay sets, at
// their largest: the budget is computed for a 255-byte content type.
func relayPublishing(headers amqp.Table) amqp.Publishing {
	return amqp.Publishing{
		Headers:      headers,
		ContentType:  strings.Repeat("c", outbox.MaxShortString),
		DeliveryMode: amqp.Persistent,
		MessageId:    "7d444840-9dc0-11d1-b245-5ffdce74fad2",
		Timestamp:    time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC),
		Body:         []byte("{}"),
	}
}

// checkRoundTrip publishes tab with the relay's properties through
// amqp091-go's encoder and decoder and fails unless it reads back equal,
// in a content header frame within frameMax less outbox.HeaderSlack.
func checkRoundTrip(t *testing.T, l *loopback, tab amqp.Table, frameMax int) {
	t.Helper()
	d, frame, err := l.roundTrip(relayPublishing(tab))
	if err != nil {
		t.Fatalf("amqp091-go cannot read back headers the relay accepted: %v", err)
	}
	if !equalTable(d.Headers, tab) {
		t.Fatalf("headers changed on the wire:\n sent %#v\n read %#v", tab, d.Headers)
	}
	if frame > frameMax-outbox.HeaderSlack {
		t.Fatalf("content header frame of %d bytes, over frame_max %d less the %d-byte slack", frame, frameMax, outbox.HeaderSlack)
	}
}

// TestLimitsAreAMQP091s shows each limit is amqp091-go's own, through its
// encoder and decoder: the largest value the validator accepts reads back,
// and one step more (sent raw, without the validator) is refused by an
// amqp091-go consumer, which closes its connection.
func TestLimitsAreAMQP091s(t *testing.T) {
	t.Parallel()
	deep := func(n int) any {
		var v any = []any{}
		for i := 1; i < n; i++ {
			v = []any{v}
		}
		return v
	}
	str := func(tableSize int) amqp.Table { return amqp.Table{"h": strings.Repeat("v", tableSize-11)} }
	const frameMax = outbox.DefaultFrameMax
	// The largest header table amqp091-go reads in one frame with the
	// relay's properties at their largest: frame_max less the frame
	// envelope (8), the content header's fixed part (14), content type
	// (1+255), delivery mode (1), message id (1+36) and timestamp (8).
	wire := frameMax - 8 - 14 - 256 - 1 - 37 - 8
	cases := []struct {
		name      string
		ok, over  amqp.Table
		validated string // ok as JSON, which decodeHeaders must accept
	}{
		{"width", amqp.Table{"a": make([]any, 8192)}, amqp.Table{"a": make([]any, 8193)},
			`{"a":[` + strings.TrimSuffix(strings.Repeat("null,", 8192), ",") + `]}`},
		{"depth", amqp.Table{"a": deep(32)}, amqp.Table{"a": deep(33)},
			`{"a":` + strings.Repeat("[", 32) + strings.Repeat("]", 32) + `}`},
		{"frame", str(wire), str(wire + 1), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			checkRoundTrip(t, newLoopback(t, frameMax), tc.ok, frameMax+outbox.HeaderSlack)
			if _, _, err := newLoopback(t, frameMax).roundTrip(relayPublishing(tc.over)); err == nil {
				t.Fatalf("amqp091-go read a table over its %s limit", tc.name)
			}
			if tc.validated != "" {
				if _, err := decodeHeaders([]byte(tc.validated)); err != nil {
					t.Fatalf("decodeHeaders refuses what amqp091-go reads: %v", err)
				}
			}
		})
	}
	// The validator's budget is the wire's limit less the slack, exactly.
	if wire-outbox.HeaderSlack != outbox.MaxHeaderTableBytes {
		t.Fatalf("budget %d, want the wire limit %d less %d", outbox.MaxHeaderTableBytes, wire, outbox.HeaderSlack)
	}
}

func TestHeadersRoundTrip(t *testing.T) {
	t.Parallel()
	l := newLoopback(t, outbox.DefaultFrameMax)
	for _, in := range []string{
		`{"s":"x","i":42,"f":1.5,"b":false,"t":true,"n":null}`,
		`{"o":{"k":[1,"two",{"three":[]}],"e":{}},"neg":-9223372036854775808,"u":"\u00e9\u20ac\ud83d\ude00"}`,
		`{"big":12345678901234567890,"tiny":5e-324,"max":1.7976931348623157e308,"z":-0.0}`,
		`{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","tracestate":"` + strings.Repeat("k=v,", 120) + `"}`,
		`{"h":"` + strings.Repeat("v", outbox.MaxHeaderTableBytes-11) + `"}`,
	} {
		tab, err := decodeHeaders([]byte(in))
		if err != nil {
			t.Fatalf("decodeHeaders(%.60s): %v", in, err)
		}
		checkRoundTrip(t, l, tab, outbox.DefaultFrameMax)
	}
}

// FuzzDecodeHeaders: anything decodeHeaders accepts goes through
// amqp091-go's own encoder and decoder unchanged, within the frame budget;
// so anything amqp091-go would refuse, decodeHeaders refuses. A plain
// `go test` runs the seeds; `make fuzz` explores. The seeds stay small:
// the fuzzer spends its time minimizing large interesting inputs, and
// the limits' edges (8,192 entries, the byte budget) have their own
// tests (TestLimitsAreAMQP091s, TestHeadersRoundTrip).
func FuzzDecodeHeaders(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"a":[1,{"b":null}]}`, `{"x":1e308}`, `"str"`, `{"\u0000":true}`, `{"a":1.0,"b":-0,"c":1E+2}`,
		`{"n":9223372036854775807,"m":9223372036854775808}`, `{"e":"é😀","k\n":"\"q\""}`, `{"a":[[[[[[{"b":[]}]]]]]]}`,
		`{"a":` + strings.Repeat("[", 32) + strings.Repeat("]", 32) + `}`,
		`{"a":` + strings.Repeat("[", 33) + strings.Repeat("]", 33) + `}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		tab, err := decodeHeaders(in)
		if err != nil {
			return
		}
		checkRoundTrip(t, newLoopback(t, outbox.DefaultFrameMax), tab, outbox.DefaultFrameMax)
	})
}

// loopback is the smallest AMQP 0-9-1 server that lets a test run a
// message through amqp091-go's own encoder and decoder, which the library
// does not export: over a net.Pipe it answers the handshake, channel.open
// and basic.consume, and reflects every basic.publish back as a
// basic.deliver with the content header frame byte for byte. So what a
// consumer reads is exactly what amqp091-go wrote, read by amqp091-go,
// with its reader's limits (frame size, container width and depth).
type loopback struct {
	conn       *amqp.Connection
	ch         *amqp.Channel
	deliveries <-chan amqp.Delivery
	closed     chan *amqp.Error
	headerLen  chan int // payload length of each reflected content header frame
}

// newLoopback opens a connection that negotiates frameMax and a consumer
// on it.
func newLoopback(t testing.TB, frameMax int) *loopback {
	t.Helper()
	client, server := net.Pipe()
	l := &loopback{headerLen: make(chan int, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer server.Close()
		_ = serveLoopback(server, uint32(frameMax), l.headerLen)
	}()
	conn, err := amqp.Open(client, amqp.Config{
		SASL:      []amqp.Authentication{&amqp.PlainAuth{Username: "u", Password: "p"}},
		Vhost:     "/",
		FrameSize: frameMax,
		Locale:    "en_US",
	})
	if err != nil {
		t.Fatalf("loopback open: %v", err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		_ = client.Close()
		<-done
	})
	l.conn = conn
	l.closed = conn.NotifyClose(make(chan *amqp.Error, 1))
	if l.ch, err = conn.Channel(); err != nil {
		t.Fatalf("loopback channel: %v", err)
	}
	if l.deliveries, err = l.ch.Consume("q", "", true, false, false, false, nil); err != nil {
		t.Fatalf("loopback consume: %v", err)
	}
	return l
}

// roundTrip publishes pub and returns it as amqp091-go reads it back, and
// the size of its content header frame (payload plus the 8 bytes of frame
// envelope). An error means amqp091-go could not read it: the connection
// is then closed, with the reader's reason.
func (l *loopback) roundTrip(pub amqp.Publishing) (amqp.Delivery, int, error) {
	if err := l.ch.Publish("ex", "rk", false, false, pub); err != nil {
		return amqp.Delivery{}, 0, err
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	var n int
	select {
	case n = <-l.headerLen:
	case <-timeout.C:
		return amqp.Delivery{}, 0, errors.New("loopback: publish never arrived")
	}
	select {
	case d, ok := <-l.deliveries:
		if !ok {
			return amqp.Delivery{}, n + 8, fmt.Errorf("connection closed: %v", <-l.closed)
		}
		return d, n + 8, nil
	case <-timeout.C:
		return amqp.Delivery{}, n + 8, errors.New("loopback: no delivery")
	}
}

func serveLoopback(rw io.ReadWriter, frameMax uint32, headerLen chan<- int) error {
	r := bufio.NewReader(rw)
	if _, err := io.ReadFull(r, make([]byte, 8)); err != nil { // "AMQP\x00\x00\x09\x01"
		return err
	}
	var args bytes.Buffer
	args.Write([]byte{0, 9})
	writeLongstr(&args, "")      // server properties: an empty table
	writeLongstr(&args, "PLAIN") // mechanisms
	writeLongstr(&args, "en_US") // locales
	if err := writeMethod(rw, 0, 10, 10, args.Bytes()); err != nil {
		return err
	}
	var tag string
	for {
		typ, channel, payload, err := readFrame(r)
		if err != nil {
			return err
		}
		if typ != 1 { // heartbeat
			continue
		}
		class, method, args := binary.BigEndian.Uint16(payload), binary.BigEndian.Uint16(payload[2:]), payload[4:]
		switch {
		case class == 10 && method == 11: // connection.start-ok
			tune := binary.BigEndian.AppendUint16(nil, 2047)
			tune = binary.BigEndian.AppendUint32(tune, frameMax)
			tune = binary.BigEndian.AppendUint16(tune, 0)
			err = writeMethod(rw, 0, 10, 30, tune)
		case class == 10 && method == 31: // connection.tune-ok
		case class == 10 && method == 40: // connection.open
			err = writeMethod(rw, 0, 10, 41, []byte{0})
		case class == 10 && method == 50: // connection.close
			_ = writeMethod(rw, 0, 10, 51, nil)
			return nil
		case class == 20 && method == 10: // channel.open
			err = writeMethod(rw, channel, 20, 11, []byte{0, 0, 0, 0})
		case class == 20 && method == 40: // channel.close
			err = writeMethod(rw, channel, 20, 41, nil)
		case class == 60 && method == 20: // basic.consume: reserved, queue, consumer tag
			_, rest := shortstr(args[2:])
			tag, _ = shortstr(rest)
			var ok bytes.Buffer
			writeShortstr(&ok, tag)
			err = writeMethod(rw, channel, 60, 21, ok.Bytes())
		case class == 60 && method == 40: // basic.publish: reserved, exchange, routing key
			exchange, rest := shortstr(args[2:])
			routingKey, _ := shortstr(rest)
			_, _, header, err := readFrame(r)
			if err != nil {
				return err
			}
			headerLen <- len(header)
			size := binary.BigEndian.Uint64(header[4:])
			var body [][]byte
			for got := uint64(0); got < size; {
				_, _, b, err := readFrame(r)
				if err != nil {
					return err
				}
				body = append(body, b)
				got += uint64(len(b))
			}
			var d bytes.Buffer
			writeShortstr(&d, tag)
			d.Write(binary.BigEndian.AppendUint64(nil, 1)) // delivery tag
			d.WriteByte(0)                                 // redelivered
			writeShortstr(&d, exchange)
			writeShortstr(&d, routingKey)
			if err := writeMethod(rw, channel, 60, 60, d.Bytes()); err != nil {
				return err
			}
			if err := writeFrame(rw, 2, channel, header); err != nil {
				return err
			}
			for _, b := range body {
				if err := writeFrame(rw, 3, channel, b); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("loopback: unexpected method %d.%d", class, method)
		}
		if err != nil {
			return err
		}
	}
}

func readFrame(r io.Reader) (typ byte, channel uint16, payload []byte, err error) {
	var h [7]byte
	if _, err = io.ReadFull(r, h[:]); err != nil {
		return
	}
	payload = make([]byte, binary.BigEndian.Uint32(h[3:])+1)
	if _, err = io.ReadFull(r, payload); err != nil {
		return
	}
	return h[0], binary.BigEndian.Uint16(h[1:]), payload[:len(payload)-1], nil
}

func writeFrame(w io.Writer, typ byte, channel uint16, payload []byte) error {
	f := []byte{typ}
	f = binary.BigEndian.AppendUint16(f, channel)
	f = binary.BigEndian.AppendUint32(f, uint32(len(payload)))
	f = append(append(f, payload...), 0xce)
	_, err := w.Write(f)
	return err
}

func writeMethod(w io.Writer, channel, class, method uint16, args []byte) error {
	p := binary.BigEndian.AppendUint16(nil, class)
	p = binary.BigEndian.AppendUint16(p, method)
	return writeFrame(w, 1, channel, append(p, args...))
}

func writeShortstr(b *bytes.Buffer, s string) { b.WriteByte(byte(len(s))); b.WriteString(s) }

func writeLongstr(b *bytes.Buffer, s string) {
	b.Write(binary.BigEndian.AppendUint32(nil, uint32(len(s))))
	b.WriteString(s)
}

func shortstr(b []byte) (string, []byte) { return string(b[1 : 1+b[0]]), b[1+b[0]:] }
