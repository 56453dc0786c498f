package outbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// DefaultContentType is used when a Message leaves ContentType empty.
const DefaultContentType = "application/json"

// Message is one row to be published by the relay.
type Message struct {
	// MessageID is the AMQP message-id. Empty means a new random UUID.
	// When set it must be a UUID; reusing one is rejected by the table.
	MessageID string
	// Exchange is the target exchange; empty is the default exchange,
	// which routes by queue name.
	Exchange string
	// RoutingKey is required.
	RoutingKey string
	// Payload is the message body, sent as is.
	Payload []byte
	// ContentType defaults to DefaultContentType.
	ContentType string
	// Headers become AMQP headers. Values must be JSON-encodable; a
	// "traceparent" header is propagated as is.
	Headers map[string]any
	// OrderingKey, when set, makes rows sharing it publish in outbox order.
	OrderingKey string
	// AvailableAt delays publishing; zero means now.
	AvailableAt time.Time
}

// ErrInvalidMessage is wrapped by every validation error, so callers can
// tell a bad message (permanent) from a database error (maybe transient).
var ErrInvalidMessage = errors.New("invalid message")

// Limits applied by Validate. Routing keys and exchange names are AMQP
// short strings (at most 255 bytes).
const maxShortString = 255

// Validate reports the first problem with m, wrapped in ErrInvalidMessage.
func (m *Message) Validate() error {
	switch {
	case m.RoutingKey == "":
		return invalid("routing key is empty")
	case len(m.RoutingKey) > maxShortString:
		return invalid("routing key is %d bytes, at most %d", len(m.RoutingKey), maxShortString)
	case len(m.Exchange) > maxShortString:
		return invalid("exchange is %d bytes, at most %d", len(m.Exchange), maxShortString)
	case !utf8.ValidString(m.RoutingKey) || !utf8.ValidString(m.Exchange):
		return invalid("exchange and routing key must be UTF-8")
	case m.Payload == nil:
		return invalid("payload is nil")
	case len(m.ContentType) > maxShortString:
		return invalid("content type is %d bytes, at most %d", len(m.ContentType), maxShortString)
	}
	if m.MessageID != "" {
		if _, err := uuid.Parse(m.MessageID); err != nil {
			return invalid("message id %q is not a UUID", m.MessageID)
		}
	}
	for k := range m.Headers {
		if len(k) > maxShortString {
			return invalid("header name %.20q... is %d bytes, at most %d", k, len(k), maxShortString)
		}
	}
	return nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("outbox: %w: %s", ErrInvalidMessage, fmt.Sprintf(format, args...))
}

// row is a Message in the shape of the table's columns.
type row struct {
	messageID   string
	exchange    string
	routingKey  string
	payload     []byte
	contentType string
	headers     []byte
	orderingKey *string
	availableAt *time.Time
}

func (m *Message) row() (row, error) {
	if err := m.Validate(); err != nil {
		return row{}, err
	}
	r := row{
		messageID:   m.MessageID,
		exchange:    m.Exchange,
		routingKey:  m.RoutingKey,
		payload:     m.Payload,
		contentType: m.ContentType,
		headers:     []byte("{}"),
	}
	if r.messageID == "" {
		r.messageID = uuid.NewString()
	}
	if r.contentType == "" {
		r.contentType = DefaultContentType
	}
	if len(m.Headers) > 0 {
		b, err := json.Marshal(m.Headers)
		if err != nil {
			return row{}, invalid("headers: %v", err)
		}
		r.headers = b
	}
	if m.OrderingKey != "" {
		k := m.OrderingKey
		r.orderingKey = &k
	}
	if !m.AvailableAt.IsZero() {
		t := m.AvailableAt
		r.availableAt = &t
	}
	return r, nil
}
