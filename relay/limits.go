package relay

import (
	"errors"
	"fmt"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/outbox"
)

// errPoison marks a row that can never be published as it stands: a
// retry would fail the same way (or worse, kill the connection), so the
// row is parked dead at once. It is a permanent error in the sense of the
// house rules: classified here, once, before anything goes on the wire.
var errPoison = errors.New("row can never be published")

// reasonBadProperty labels a row whose exchange, routing key or content
// type AMQP or the broker cannot carry (too long, not UTF-8, control
// characters). The other poison reasons are reasonTooLarge (payload or
// header table over its limit) and reasonBadHeaders (headers that are
// not a JSON object, too wide, too deep, a name too long, a number out of
// range).
const reasonBadProperty = "bad_property"

// reasonRefusedTarget labels a row sent where the relay never sends: one
// of the inbox's own retry or dead-letter queues through the default
// exchange. The table's insert trigger refuses them (and the operator's
// allow-list, see docs/sharing.md); this catches rows written before it.
const reasonRefusedTarget = "refused_target"

// maxHeaderText is the most jsonb text a row's headers may come back as
// (the outbox_headers_text_size constraint).
const maxHeaderText = 262144

// reservedHeader reports whether a header name is one the broker or the
// inbox gives meaning to, which a row may not set (the
// outbox_headers_reserved constraint): x-inbox-*, x-death,
// x-first-death-*, x-last-death-*, x-delivery-count, x-received-from, CC
// and BCC, in any case.
func reservedHeader(name string) bool {
	n := strings.ToLower(name)
	switch n {
	case "x-death", "x-delivery-count", "x-received-from", "cc", "bcc":
		return true
	}
	return strings.HasPrefix(n, "x-inbox-") || strings.HasPrefix(n, "x-first-death-") || strings.HasPrefix(n, "x-last-death-")
}

// inboxQueue reports whether routingKey names, through the default
// exchange, a queue the inbox keeps for itself: <queue>.dead or
// <queue>.retry.<delay> (inbox.DeadQueue, inbox.RetryQueue). Messages
// there are trusted by the inbox as its own retries.
func inboxQueue(exchange, routingKey string) bool {
	if exchange != "" {
		return false
	}
	if strings.HasSuffix(routingKey, ".dead") {
		return true
	}
	i := strings.LastIndex(routingKey, ".retry.")
	if i < 0 {
		return false
	}
	d := routingKey[i+len(".retry."):]
	unit := strings.TrimLeft(d, "0123456789")
	return len(unit) < len(d) && (unit == "ms" || unit == "s" || unit == "m" || unit == "h")
}

// poisonError is what checkRow returns: the limit that was broken, in
// words that name the field and the limit, and its metrics label.
type poisonError struct {
	reason string
	err    error
}

func (e *poisonError) Error() string   { return e.err.Error() }
func (e *poisonError) Unwrap() []error { return []error{errPoison, e.err} }

// poisonReason returns the metrics label of an error from checkRow
// (reasonTooLarge, reasonBadHeaders or reasonBadProperty), or "" when err
// is not a poison error.
func poisonReason(err error) string {
	var pe *poisonError
	if errors.As(err, &pe) {
		return pe.reason
	}
	return ""
}

// checkRow checks one claimed row against everything AMQP 0-9-1, RabbitMQ
// and amqp091-go readers can carry, before it goes on the wire, and
// returns its headers as the table to publish (nil for none).
//
// The checks are outbox's, the ones outbox.Enqueue and the table's CHECK
// constraints apply: exchange, routing key and content type as
// outbox.CheckProperties; the payload at most maxPayload bytes (no limit
// when maxPayload <= 0); the headers (the raw jsonb text) as
// outbox.DecodeHeaders with the budget of frameMax, the frame_max the
// connection negotiated (amqp.Connection.Config.FrameSize; <= 0 means the
// default 131,072), less what the row's optional AMQP properties props
// take (they are checked as outbox.CheckAMQPProperties). payloadLen is the payload's length, so the claim need
// not load a payload it is about to refuse (octet_length in the query).
//
// A non-nil error is permanent: it wraps errPoison, its text names the
// field and the limit ("headers: \"big\" makes the header table 200,123
// bytes, over the 129,724-byte budget for frame_max 131,072"), and
// poisonReason(err) is its metrics label. Limit violations other than the
// payload also wrap an *outbox.LimitError.
func checkRow(exchange, routingKey, contentType string, headers []byte, payloadLen, maxPayload, frameMax int, props outbox.AMQPProperties) (amqp.Table, error) {
	if err := outbox.CheckProperties(exchange, routingKey, contentType); err != nil {
		return nil, &poisonError{reasonBadProperty, err}
	}
	if err := outbox.CheckAMQPProperties(props); err != nil {
		return nil, &poisonError{reasonBadProperty, err}
	}
	if maxPayload > 0 && payloadLen > maxPayload {
		return nil, &poisonError{reasonTooLarge, fmt.Errorf("payload is %d bytes, over max_payload_bytes %d", payloadLen, maxPayload)}
	}
	if inboxQueue(exchange, routingKey) {
		return nil, &poisonError{reasonRefusedTarget, fmt.Errorf("routing_key: %q through the default exchange is an inbox retry or dead-letter queue", routingKey)}
	}
	if len(headers) > maxHeaderText {
		return nil, &poisonError{reasonTooLarge, fmt.Errorf("headers: %d bytes of JSON text, over the %d-byte limit", len(headers), maxHeaderText)}
	}
	t, err := rowHeadersTable(headers, frameMax, props)
	if err != nil {
		var le *outbox.LimitError
		if errors.As(err, &le) && le.Limit == "size" {
			return nil, &poisonError{reasonTooLarge, err}
		}
		return nil, &poisonError{reasonBadHeaders, err}
	}
	for k := range t {
		if reservedHeader(k) {
			return nil, &poisonError{reasonBadHeaders, fmt.Errorf("headers: %q is a reserved header (the broker's or the inbox's)", k)}
		}
	}
	return t, nil
}

// amqpProperties checks the priority a row's smallint column holds (an
// AMQP octet: 0-255; the table's constraint says the same) and returns the
// row's optional properties for checkRow and the publishing.
func (p rowProps) amqpProperties() (outbox.AMQPProperties, error) {
	// The ordering key has a short string's limits (the
	// outbox_ordering_key_shortstr constraint): it is logged, traced and
	// listed by `relay status`.
	switch k := p.orderingKey; {
	case len(k) > outbox.MaxShortString:
		return outbox.AMQPProperties{}, &poisonError{reasonBadProperty,
			fmt.Errorf("ordering_key: %d bytes, over the %d-byte limit of an AMQP short string", len(k), outbox.MaxShortString)}
	case strings.ContainsFunc(k, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return outbox.AMQPProperties{}, &poisonError{reasonBadProperty, errors.New("ordering_key: holds a control character")}
	}
	if p.priority < 0 || p.priority > 255 {
		return outbox.AMQPProperties{}, &poisonError{reasonBadProperty,
			&outbox.LimitError{Field: "priority", Limit: "range"}}
	}
	return outbox.AMQPProperties{Type: p.typ, CorrelationID: p.correlationID, ReplyTo: p.replyTo,
		Expiration: p.expiration, Priority: uint8(p.priority), AppID: p.appID}, nil
}
