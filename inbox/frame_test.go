package inbox

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// everyType holds a header of each type amqp091-go reads and writes.
func everyType() amqp.Table {
	return amqp.Table{
		"bool": true, "byte": byte(1), "int8": int8(-1), "int16": int16(-2), "uint16": uint16(2),
		"int32": int32(-3), "uint32": uint32(3), "int64": int64(-4), "float32": float32(1.5),
		"float64": 2.5, "decimal": amqp.Decimal{Scale: 2, Value: 12345}, "string": "héllo",
		"bytes": []byte{1, 2, 3}, "time": time.Unix(1700000000, 0), "void": nil,
		"array": []any{"a", int64(1), []any{true}}, "table": amqp.Table{"nested": amqp.Table{"k": "v"}},
	}
}

// The measured size is what the broker counts. RabbitMQ names the size of
// a frame it refuses: a header frame of every field type, measured well
// over the limit, must be refused with exactly the size measured here, and
// one at the budget amqp091-go's reader accepts (frame_max less the
// 8-byte frame overhead) goes through and reads back. This checks
// headerPayloadSize against the broker, through amqp091-go's own encoder.
//
// (RabbitMQ itself tolerates 8 bytes more, for clients that count the
// overhead in frame_max; amqp091-go's reader does not, so neither do we.)
func TestHeaderSizeMatchesTheBroker(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	conn, ch := testenv.AMQP(t, env.AMQPURL)
	q := testenv.Queue(t, ch, false)
	if conn.Config.FrameSize <= 0 {
		t.Skip("the broker negotiated no frame limit")
	}
	limit := conn.Config.FrameSize - frameOverhead
	publishing := func(size int) amqp.Publishing {
		p := amqp.Publishing{
			Headers: everyType(), ContentType: "text/plain", MessageId: "m", DeliveryMode: amqp.Persistent,
			Priority: 1, Timestamp: time.Now(), CorrelationId: "c", Type: "t", AppId: "a",
		}
		p.Headers["pad"] = ""
		p.Headers["pad"] = strings.Repeat("p", size-headerPayloadSize(p))
		return p
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	dc, err := ch.PublishWithDeferredConfirm("", q, true, false, publishing(limit))
	if err != nil {
		t.Fatal(err)
	}
	if !dc.Wait() {
		t.Fatal("a header frame at the limit was refused")
	}
	got := testenv.Consume(t, ch, q, 1, 30*time.Second)
	if len(got[0].Headers) != len(everyType())+1 {
		t.Errorf("headers did not survive the round trip: %v", got[0].Headers)
	}

	// Its own connection: this publish kills it.
	conn2, ch2 := testenv.AMQP(t, env.AMQPURL)
	closed := conn2.NotifyClose(make(chan *amqp.Error, 1))
	over := limit + 1000
	if err := ch2.Publish("", q, true, false, publishing(over)); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-closed:
		want := fmt.Sprintf("{frame_too_large,%d,", over)
		if e == nil || e.Code != amqp.FrameError || !strings.Contains(e.Reason, want) {
			t.Fatalf("connection closed with %v, want FRAME_ERROR naming %s", e, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a header frame 1000 bytes over frame_max was accepted")
	}
}

func TestFitTrimsLargestOriginalHeadersOnly(t *testing.T) {
	t.Parallel()
	budget := headerBudget(131072)
	own := amqp.Table{HeaderAttempts: int64(2), HeaderLastError: strings.Repeat("e", 2000), HeaderDeadReason: DeadReasonHeadersTooLarge}
	h := amqp.Table{"big": strings.Repeat("v", 130_000), "medium": strings.Repeat("m", 900), "traceparent": "00-abc-01"}
	for k, v := range own {
		h[k] = v
	}
	p := amqp.Publishing{MessageId: "m", Headers: h}
	trimmed, ok := fit(&p, budget, isOwnHeader)
	if !ok || !trimmed {
		t.Fatalf("fit = trimmed %v, ok %v", trimmed, ok)
	}
	if n := headerPayloadSize(p); n > budget {
		t.Fatalf("%d bytes after fit, budget %d", n, budget)
	}
	if _, ok := p.Headers["big"]; ok {
		t.Error("the 130 KB header was kept")
	}
	if p.Headers["traceparent"] != "00-abc-01" || p.Headers["medium"] == nil {
		t.Errorf("small headers removed although the big one was enough: %v", keys(p.Headers))
	}
	for k, v := range own {
		if p.Headers[k] != v {
			t.Errorf("own header %s changed: %v", k, p.Headers[k])
		}
	}
	note, _ := p.Headers[HeaderTrimmed].(string)
	if !strings.Contains(note, `"big" (130009 bytes)`) || strings.Contains(note, "medium") {
		t.Errorf("%s = %q", HeaderTrimmed, note)
	}
	if _, has := h["big"]; !has {
		t.Error("fit changed the caller's table")
	}

	small := amqp.Publishing{MessageId: "m", Headers: amqp.Table{"a": "b"}}
	if trimmed, ok := fit(&small, budget, isOwnHeader); trimmed || !ok || len(small.Headers) != 1 {
		t.Errorf("a copy that fits was changed: %v", small.Headers)
	}
	tooMuchOwn := amqp.Publishing{Headers: amqp.Table{HeaderLastError: strings.Repeat("e", budget)}}
	if _, ok := fit(&tooMuchOwn, budget, isOwnHeader); ok {
		t.Error("fit claimed success with own headers over the budget")
	}
	if _, ok := fit(&amqp.Publishing{Headers: amqp.Table{"x": strings.Repeat("v", 1<<20)}}, -1, isOwnHeader); !ok {
		t.Error("no frame limit (frame_max 0) must never trim")
	}
}

func TestHeaderBudget(t *testing.T) {
	t.Parallel()
	cases := map[int]int{0: -1, -1: -1, 131072: 131072 - 8 - brokerReserve, 4096: 4096 - 8 - 1024}
	for frame, want := range cases {
		if got := headerBudget(frame); got != want {
			t.Errorf("headerBudget(%d) = %d, want %d", frame, got, want)
		}
	}
	if n := fieldSize(struct{}{}); n != unencodable {
		t.Errorf("an unencodable value measures %d", n)
	}
}

func keys(t amqp.Table) []string {
	var s []string
	for k := range t {
		s = append(s, k)
	}
	return s
}

// FuzzFit: whatever headers a delivery carries, a copy either fits the
// budget after fit, keeping every x-inbox-* header, or fit says it cannot;
// a copy that fitted already is left alone.
func FuzzFit(f *testing.F) {
	f.Add("traceparent", 100, 130_000, 3, 4096)
	f.Add("x-inbox-last-error", 5000, 10, 50, 131072)
	f.Add("", 0, 0, 0, 0)
	f.Fuzz(func(t *testing.T, name string, own, big, n, frame int) {
		own, big, n = min(max(own, 0), 1<<18), min(max(big, 0), 1<<18), min(max(n, 0), 64)
		frame = min(max(frame, 0), 1<<20)
		if len(name) > 255 {
			name = name[:255]
		}
		h := amqp.Table{HeaderAttempts: int64(n), HeaderLastError: strings.Repeat("e", own)}
		h[name] = strings.Repeat("b", big)
		for i := range n {
			h[name+strings.Repeat("k", i+1)] = []any{int64(i), strings.Repeat("a", i*97)}
		}
		before := headerPayloadSize(amqp.Publishing{Headers: h})
		p := amqp.Publishing{Headers: h, MessageId: "m"}
		budget := headerBudget(frame)
		trimmed, ok := fit(&p, budget, isOwnHeader)
		size := headerPayloadSize(p)
		switch {
		case ok && budget >= 0 && size > budget:
			t.Fatalf("fit: %d bytes over a budget of %d", size, budget)
		case !trimmed && len(p.Headers) != len(h):
			t.Fatalf("untrimmed copy lost headers")
		case budget < 0 && (trimmed || !ok):
			t.Fatalf("no limit, yet trimmed %v ok %v (%d bytes)", trimmed, ok, before)
		}
		for k, v := range h {
			if ok && isOwnHeader(k) && k != HeaderTrimmed && !reflect.DeepEqual(p.Headers[k], v) {
				t.Fatalf("own header %s removed or changed", k)
			}
		}
	})
}
