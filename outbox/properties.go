package outbox

import (
	"strconv"
)

// MaxExpiration is the largest per-message TTL RabbitMQ accepts in the
// expiration property, in milliseconds (about 49.7 days).
const MaxExpiration = 4294967295

// AMQPProperties are the optional AMQP basic properties a row may carry,
// beside the ones the relay always sets (content-type, message-id,
// timestamp, delivery-mode, headers). An empty string, or a zero
// Priority, is not sent. They are the columns type, correlation_id,
// reply_to, expiration, priority and app_id (migration 5).
type AMQPProperties struct {
	Type          string // AMQP type: the message's kind, e.g. "order.created"
	CorrelationID string // AMQP correlation-id (RPC replies, tracing)
	ReplyTo       string // AMQP reply-to: the queue a reply goes to
	// Expiration is RabbitMQ's per-message TTL: milliseconds as decimal
	// digits ("60000"), at most MaxExpiration.
	Expiration string
	Priority   uint8  // AMQP priority, 0-255; 0 is not sent
	AppID      string // AMQP app-id: the producing application
}

// CheckAMQPProperties checks p against what AMQP and RabbitMQ accept, as
// the table's constraints (migration 5) and the relay do: Type,
// CorrelationID, ReplyTo, AppID and Expiration are short strings (at most
// MaxShortString bytes of UTF-8, no control characters), and Expiration is
// a whole number of milliseconds written in digits, at most MaxExpiration
// (RabbitMQ closes the channel over any other). Errors are *LimitError
// with Field the column's name.
func CheckAMQPProperties(p AMQPProperties) error {
	for _, f := range [...]struct{ field, v string }{
		{"type", p.Type}, {"correlation_id", p.CorrelationID}, {"reply_to", p.ReplyTo},
		{"expiration", p.Expiration}, {"app_id", p.AppID},
	} {
		if err := checkShortString(f.field, f.v); err != nil {
			return err
		}
	}
	if p.Expiration == "" {
		return nil
	}
	for i := 0; i < len(p.Expiration); i++ {
		if c := p.Expiration[i]; c < '0' || c > '9' {
			return limitErr("expiration", "format", "%q is not a whole number of milliseconds (digits only, such as \"60000\")", p.Expiration)
		}
	}
	if n, err := strconv.ParseUint(p.Expiration, 10, 64); err != nil || n > MaxExpiration || len(p.Expiration) > 10 {
		return limitErr("expiration", "range", "%q is over RabbitMQ's limit of %d milliseconds", p.Expiration, uint64(MaxExpiration))
	}
	return nil
}

// encodedSize is how many bytes p adds to a content header frame: each
// short string sent takes its length and one length byte, a priority one
// byte. The header table's budget shrinks by as much (see
// DecodeRowHeaders).
func (p AMQPProperties) encodedSize() int {
	n := 0
	for _, s := range [...]string{p.Type, p.CorrelationID, p.ReplyTo, p.Expiration, p.AppID} {
		if s != "" {
			n += 1 + len(s)
		}
	}
	if p.Priority > 0 {
		n++
	}
	return n
}
