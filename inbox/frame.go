package inbox

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// A message's properties, headers included, travel in one content header
// frame: unlike the body, AMQP 0-9-1 cannot split them. A frame larger than
// the connection's negotiated frame_max makes RabbitMQ close the whole
// connection (FRAME_ERROR), taking every unacked delivery with it, and the
// original would then come back and fail the same way for ever. So a copy
// is measured before it is published; see fit.

// frameOverhead is a frame's type, channel and size fields and its end
// octet: what frame_max holds beyond the payload (RabbitMQ and amqp091-go
// both count it so).
const frameOverhead = 1 + 2 + 4 + 1

// brokerReserve is left free in a copy's header frame for what RabbitMQ
// adds to it later: dead-lettering a retry copy back to the main queue
// adds an x-death entry and the x-first-death-* (3.13: also
// x-last-death-*) headers, and a redelivery from a quorum queue adds
// x-delivery-count. With queue names of the full 255 bytes that is about
// 1,350 bytes; the rest is margin. A copy that filled the frame to the
// byte would come back one frame too large for this client to read.
const brokerReserve = 2048

// headerBudget is the largest content header payload a copy may have on a
// connection whose negotiated frame size is frameSize; -1 means no limit
// (frame_max 0).
//
// The reserve shrinks on a connection with a small frame_max (RabbitMQ
// accepts 4096), where a fixed 2 KiB would leave too little room.
func headerBudget(frameSize int) int {
	if frameSize <= 0 {
		return -1
	}
	return frameSize - frameOverhead - min(brokerReserve, frameSize/4)
}

// headerPayloadSize is the size of the content header frame's payload that
// amqp091-go writes for p (its headerFrame.write): class id, weight, body
// size, property flags, then each property that is set.
func headerPayloadSize(p amqp.Publishing) int {
	n := 2 + 2 + 8 + 2
	for _, s := range []string{p.ContentType, p.ContentEncoding, p.CorrelationId, p.ReplyTo,
		p.Expiration, p.MessageId, p.Type, p.UserId, p.AppId} {
		if s != "" {
			n += 1 + len(s)
		}
	}
	if len(p.Headers) > 0 {
		n += 4 + tableSize(p.Headers)
	}
	if p.DeliveryMode > 0 {
		n++
	}
	if p.Priority > 0 {
		n++
	}
	if !p.Timestamp.IsZero() {
		n += 8
	}
	return n
}

// tableSize is the encoded size of a field table's entries, without its
// 4-byte length.
func tableSize(t amqp.Table) int {
	n := 0
	for k, v := range t {
		n += entrySize(k, v)
	}
	return n
}

// entrySize is the encoded size of one table entry: a short string key
// and a typed value.
func entrySize(k string, v any) int { return 1 + len(k) + fieldSize(v) }

// fieldSize is the encoded size of a field value, type octet included, as
// amqp091-go's writeField encodes it. Every type its reader produces is
// covered, so any header a delivery arrived with can be measured; a type
// the client could not encode at all counts as infinitely large, so it is
// trimmed rather than sent.
func fieldSize(v any) int {
	switch v := v.(type) {
	case nil:
		return 1
	case bool, byte, int8:
		return 2
	case int16, uint16:
		return 3
	case int, int32, uint32, float32:
		return 5
	case amqp.Decimal:
		return 6
	case int64, float64, time.Time:
		return 9
	case string:
		return 5 + len(v)
	case []byte:
		return 5 + len(v)
	case []any:
		n := 5
		for _, e := range v {
			n += fieldSize(e)
		}
		return n
	case amqp.Table:
		return 5 + tableSize(v)
	}
	return unencodable
}

// unencodable is the size given to a value amqp091-go cannot encode: more
// than any frame.
const unencodable = 1 << 40

// fit makes p's header frame fit budget (see headerBudget) by removing
// headers, largest first, except those keep accepts: the inbox's own
// headers, which say why the copy exists. It records what it removed in
// HeaderTrimmed and reports whether p fits now. The size a header had is
// in the note, so an operator can tell the culprit from the bystanders.
func fit(p *amqp.Publishing, budget int, keep func(string) bool) (trimmed bool, ok bool) {
	size := headerPayloadSize(*p)
	if budget < 0 || size <= budget {
		return false, true
	}
	// Room for the note itself, at its longest.
	target := budget - entrySize(HeaderTrimmed, strings.Repeat(".", maxErrorHeader+len("…")))
	type entry struct {
		key  string
		size int
	}
	var candidates []entry
	for k, v := range p.Headers {
		if !keep(k) {
			candidates = append(candidates, entry{k, entrySize(k, v)})
		}
	}
	// Largest first, ties by name so the outcome does not depend on map
	// order.
	slices.SortFunc(candidates, func(a, b entry) int {
		return cmp.Or(cmp.Compare(b.size, a.size), strings.Compare(a.key, b.key))
	})
	h := make(amqp.Table, len(p.Headers))
	for k, v := range p.Headers {
		h[k] = v
	}
	var removed []string
	for _, e := range candidates {
		if size <= target {
			break
		}
		delete(h, e.key)
		size -= e.size
		removed = append(removed, fmt.Sprintf("%q (%d bytes)", e.key, e.size))
	}
	if size > target {
		return len(removed) > 0, false
	}
	h[HeaderTrimmed] = truncate(fmt.Sprintf("header frame over the %d-byte budget of the connection's frame_max; removed %s",
		budget, strings.Join(removed, ", ")), maxErrorHeader)
	p.Headers = h
	return true, true
}
