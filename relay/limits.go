package relay

import (
	"errors"
	"fmt"

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
	t, err := rowHeadersTable(headers, frameMax, props)
	if err != nil {
		var le *outbox.LimitError
		if errors.As(err, &le) && le.Limit == "size" {
			return nil, &poisonError{reasonTooLarge, err}
		}
		return nil, &poisonError{reasonBadHeaders, err}
	}
	return t, nil
}

// amqpProperties checks the priority a row's smallint column holds (an
// AMQP octet: 0-255; the table's constraint says the same) and returns the
// row's optional properties for checkRow and the publishing.
func (p rowProps) amqpProperties() (outbox.AMQPProperties, error) {
	if p.priority < 0 || p.priority > 255 {
		return outbox.AMQPProperties{}, &poisonError{reasonBadProperty,
			&outbox.LimitError{Field: "priority", Limit: "range"}}
	}
	return outbox.AMQPProperties{Type: p.typ, CorrelationID: p.correlationID, ReplyTo: p.replyTo,
		Expiration: p.expiration, Priority: uint8(p.priority), AppID: p.appID}, nil
}
