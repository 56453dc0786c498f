package outbox

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// What AMQP 0-9-1, RabbitMQ and amqp091-go can carry. Enqueue refuses a
// message over any of these; the relay parks a row over any of them as dead
// (it could never be published); the table's CHECK constraints (migration
// 00003) refuse plain-SQL inserts over them. One implementation serves all
// three: the relay validates with the functions in this file.
const (
	// MaxShortString is the longest AMQP short string, in bytes: the
	// exchange, routing key, content type and every header name. A longer
	// one cannot even be encoded; amqp091-go tears the connection down.
	MaxShortString = 255

	// MaxContainerElements is the most entries one header table or array
	// may hold. amqp091-go's reader refuses a bigger container as a syntax
	// error and closes the connection, so one such message would make
	// every amqp091-go consumer of its queue (the inbox included) loop on
	// reconnect.
	MaxContainerElements = 8192

	// MaxHeaderDepth is how deeply tables and arrays may nest below the
	// header table (which is depth 0): amqp091-go's reader refuses a
	// container at depth 33.
	MaxHeaderDepth = 32

	// DefaultFrameMax is RabbitMQ's default frame_max, and amqp091-go's:
	// a client negotiates the smaller of its own and the broker's, so
	// amqp091-go consumers read at most this much per frame unless
	// configured otherwise.
	DefaultFrameMax = 131072

	// HeaderSlack is kept free in the content header frame for properties
	// added after validation: a traceparent (55 bytes) and a tracestate
	// (up to 512) with their names, and a broker's x-delivery-count on a
	// quorum queue redelivery.
	HeaderSlack = 1024

	// MaxHeaderTableBytes is the encoded header table budget at
	// DefaultFrameMax: 129,724 bytes. See HeaderTableBudget.
	MaxHeaderTableBytes = DefaultFrameMax - contentHeaderOverhead
)

// contentHeaderOverhead is everything the content header frame of a
// published row holds besides the header table, at its largest: the frame
// envelope (type 1, channel 2, size 4, frame-end 1), the content header's
// fixed part (class-id 2, weight 2, body size 8, property flags 2), and the
// properties the relay sets: content type (a short string, so at most
// 1+255), delivery mode (1), message id (1 + a 36-byte UUID), timestamp
// (8); plus HeaderSlack. Counting the content type at its maximum keeps the
// budget one number, independent of the row.
const contentHeaderOverhead = 8 + 14 + (1 + MaxShortString) + 1 + (1 + 36) + 8 + HeaderSlack

// HeaderTableBudget is the largest encoded header table (the 4-byte length
// and the entries, as amqp091-go writes it) that fits one content header
// frame of frameMax bytes with the relay's other properties. The relay
// passes the frame_max it negotiated; zero or less (no limit negotiated)
// means DefaultFrameMax, because amqp091-go consumers still read with it.
func HeaderTableBudget(frameMax int) int {
	if frameMax <= 0 {
		frameMax = DefaultFrameMax
	}
	return frameMax - contentHeaderOverhead
}

// LimitError reports a value AMQP or the broker could never carry. Field
// is "exchange", "routing_key", "content_type" or "headers"; Limit says
// which limit: "length", "utf8", "control" (for the short strings),
// "json", "name", "width", "depth", "value", "size" (for headers).
type LimitError struct {
	Field string
	Limit string
	msg   string
}

func (e *LimitError) Error() string { return e.Field + ": " + e.msg }

func limitErr(field, limit, format string, args ...any) *LimitError {
	return &LimitError{Field: field, Limit: limit, msg: fmt.Sprintf(format, args...)}
}

// CheckProperties checks the short-string properties of a row: each at
// most MaxShortString bytes of UTF-8 (RabbitMQ closes the connection with
// FRAME_ERROR on malformed UTF-8 in a method's short string) and free of
// ASCII control characters (bytes below 0x20, and 0x7f). RabbitMQ 3.10
// accepts control characters in all three; they are refused anyway
// because no exchange name, routing key or media type needs one, they turn
// log lines and operator output into terminal escapes, and the table's
// CHECK constraints can say the same. Non-ASCII UTF-8 is accepted.
func CheckProperties(exchange, routingKey, contentType string) error {
	for _, f := range [...]struct{ field, v string }{
		{"exchange", exchange}, {"routing_key", routingKey}, {"content_type", contentType},
	} {
		if err := checkShortString(f.field, f.v); err != nil {
			return err
		}
	}
	return nil
}

func checkShortString(field, v string) error {
	if len(v) > MaxShortString {
		return limitErr(field, "length", "%s bytes, over the %d-byte limit of an AMQP short string", grouped(len(v)), MaxShortString)
	}
	if !utf8.ValidString(v) {
		return limitErr(field, "utf8", "not valid UTF-8")
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c == 0x7f {
			return limitErr(field, "control", "control character 0x%02x at byte %d", c, i)
		}
	}
	return nil
}

// DecodeHeaders decodes a row's headers (the jsonb text) the way the relay
// publishes them and checks them against the limits, with the header
// table budget of frameMax (see HeaderTableBudget). The result is nil for
// an empty object; otherwise nested objects are map[string]any, arrays
// []any, and numbers int64 when the JSON text is an integer that fits,
// float64 otherwise; strings, bools and nil stay as they are. That is the
// AMQP mapping: longstr 'S', int64 'l', double 'd', boolean 't', void 'V',
// table 'F', array 'A'. Errors are *LimitError.
func DecodeHeaders(raw []byte, frameMax int) (map[string]any, error) {
	return DecodeRowHeaders(raw, frameMax, AMQPProperties{})
}

// DecodeRowHeaders is DecodeHeaders for a row that also sends the optional
// properties p: the header table's budget shrinks by what they take in the
// content header frame.
func DecodeRowHeaders(raw []byte, frameMax int, p AMQPProperties) (map[string]any, error) {
	obj, size, biggest, err := decodeTree(raw)
	if err != nil || obj == nil {
		return nil, err
	}
	extra := p.encodedSize()
	if budget := HeaderTableBudget(frameMax) - extra; size > budget {
		if frameMax <= 0 {
			frameMax = DefaultFrameMax
		}
		with := ""
		if extra > 0 {
			with = fmt.Sprintf(" with this row's AMQP properties (%s bytes)", grouped(extra))
		}
		return nil, limitErr("headers", "size", "%q makes the header table %s bytes, over the %s-byte budget for frame_max %s%s",
			biggest, grouped(size), grouped(budget), grouped(frameMax), with)
	}
	return obj, nil
}

// decodeTree decodes and converts the headers and checks every limit but
// the budget. It returns the encoded size of the header table and the name
// of its largest entry (the one to blame when the table is too big).
func decodeTree(raw []byte) (obj map[string]any, size int, biggest string, err error) {
	if len(raw) == 0 || string(raw) == "{}" { // the column default: skip the decoder
		return nil, 0, "", nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var top any
	if err := dec.Decode(&top); err != nil {
		return nil, 0, "", limitErr("headers", "json", "%v", err)
	}
	if len(bytes.TrimSpace(raw[dec.InputOffset():])) > 0 {
		return nil, 0, "", limitErr("headers", "json", "trailing data after the JSON value")
	}
	obj, ok := top.(map[string]any)
	if !ok {
		return nil, 0, "", limitErr("headers", "json", "must be a JSON object")
	}
	if len(obj) == 0 {
		return nil, 0, "", nil
	}
	if err := checkWidth("", len(obj)); err != nil {
		return nil, 0, "", err
	}
	// The header table is a longstr: a 4-byte length, then per entry a
	// short string name (1 + len) and a field.
	size, biggestSize := 4, -1
	for k, v := range obj {
		if err := checkName(k); err != nil {
			return nil, 0, "", err
		}
		conv, n, err := convert(k, v, 0)
		if err != nil {
			return nil, 0, "", err
		}
		obj[k] = conv
		entry := 1 + len(k) + n
		size += entry
		if entry > biggestSize || (entry == biggestSize && k < biggest) {
			biggest, biggestSize = k, entry
		}
	}
	return obj, size, biggest, nil
}

// convert maps one JSON value inside a container at depth parent and
// returns it with its encoded field size (type octet included). path names
// it in errors.
func convert(path string, v any, parent int) (any, int, error) {
	switch x := v.(type) {
	case nil:
		return nil, 1, nil
	case bool:
		return x, 2, nil
	case string:
		return x, 5 + len(x), nil
	case json.Number:
		n, err := headerNumber(x)
		if err != nil {
			return nil, 0, limitErr("headers", "value", "%q: %v", path, err)
		}
		return n, 9, nil // 'l' and 'd' are both a type octet and 8 bytes
	case map[string]any:
		if err := checkContainer(path, len(x), parent+1); err != nil {
			return nil, 0, err
		}
		size := 1 + 4
		for k, e := range x {
			if err := checkName(k); err != nil {
				return nil, 0, err
			}
			conv, n, err := convert(path+"."+k, e, parent+1)
			if err != nil {
				return nil, 0, err
			}
			x[k] = conv
			size += 1 + len(k) + n
		}
		return x, size, nil
	case []any:
		if err := checkContainer(path, len(x), parent+1); err != nil {
			return nil, 0, err
		}
		size := 1 + 4
		for i, e := range x {
			conv, n, err := convert(path+"["+strconv.Itoa(i)+"]", e, parent+1)
			if err != nil {
				return nil, 0, err
			}
			x[i] = conv
			size += n
		}
		return x, size, nil
	default:
		return nil, 0, limitErr("headers", "value", "%q: unsupported JSON value %T", path, v)
	}
}

// headerNumber is the relay's number mapping: an integer that fits int64
// stays exact; anything else is a double, and one beyond float64's range
// (1e400 is valid JSON and jsonb) cannot be sent.
func headerNumber(x json.Number) (any, error) {
	if i, err := x.Int64(); err == nil {
		return i, nil
	}
	f, err := x.Float64()
	if err != nil || math.IsInf(f, 0) {
		return nil, fmt.Errorf("number %.40s is out of the range of a double", x)
	}
	return f, nil
}

func checkName(k string) error {
	if len(k) > MaxShortString {
		return limitErr("headers", "name", "name %.40q... is %s bytes, over the %d-byte limit of an AMQP short string", k, grouped(len(k)), MaxShortString)
	}
	return nil
}

func checkContainer(path string, n, depth int) error {
	if depth > MaxHeaderDepth {
		return limitErr("headers", "depth", "%q nests tables and arrays %d deep, over the limit of %d", path, depth, MaxHeaderDepth)
	}
	return checkWidth(path, n)
}

func checkWidth(path string, n int) error {
	if n <= MaxContainerElements {
		return nil
	}
	if path == "" {
		return limitErr("headers", "width", "%s headers, over the limit of %s entries in one table", grouped(n), grouped(MaxContainerElements))
	}
	return limitErr("headers", "width", "%q has %s entries, over the limit of %s in one table or array", path, grouped(n), grouped(MaxContainerElements))
}

// grouped formats n with thousands separators: limits are read by people.
func grouped(n int) string {
	s := strconv.Itoa(n)
	if n < 0 {
		return "-" + grouped(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// hasEscapedNUL reports whether JSON text holds the escape \u0000 (an
// escape only when preceded by an even number of backslashes). jsonb
// cannot store U+0000, so Enqueue says so before the insert fails.
func hasEscapedNUL(b []byte) bool {
	for i := 0; ; {
		j := bytes.Index(b[i:], []byte(`\u0000`))
		if j < 0 {
			return false
		}
		j += i
		n := 0
		for k := j - 1; k >= 0 && b[k] == '\\'; k-- {
			n++
		}
		if n%2 == 0 {
			return true
		}
		i = j + 1
	}
}
