package outbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

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
	// which routes by queue name. Exchange, RoutingKey and ContentType
	// are AMQP short strings: see CheckProperties for their limits.
	Exchange string
	// RoutingKey is required.
	RoutingKey string
	// Payload is the message body, sent as is.
	Payload []byte
	// ContentType defaults to DefaultContentType.
	ContentType string
	// Headers become AMQP headers. Values must be JSON-encodable; they
	// are stored as JSON and published with the mapping and limits of
	// DecodeHeaders (at most MaxHeaderTableBytes encoded, 8,192 entries
	// per table or array, 32 levels). A "traceparent" header (W3C trace
	// context) is the parent of the relay's publish span; Enqueue sets it
	// from ctx's span when it is absent.
	Headers map[string]any
	// OrderingKey, when set, makes rows sharing it publish in outbox order.
	OrderingKey string
	// AvailableAt delays publishing; zero means now.
	AvailableAt time.Time

	// Optional AMQP properties; an empty string or a zero Priority is not
	// sent. See AMQPProperties for each one, and CheckAMQPProperties for
	// their limits.
	Type          string
	CorrelationID string
	ReplyTo       string
	Expiration    string // per-message TTL in milliseconds, as digits: "60000"
	Priority      uint8
	AppID         string
}

// Properties returns m's optional AMQP properties.
func (m *Message) Properties() AMQPProperties {
	return AMQPProperties{Type: m.Type, CorrelationID: m.CorrelationID, ReplyTo: m.ReplyTo,
		Expiration: m.Expiration, Priority: m.Priority, AppID: m.AppID}
}

// ErrInvalidMessage is wrapped by every validation error, so callers can
// tell a bad message (permanent) from a database error (maybe transient).
var ErrInvalidMessage = errors.New("invalid message")

// Validate reports the first problem with m, wrapped in ErrInvalidMessage.
// Beyond the required fields it applies the limits of limits.go, exactly
// as the relay will: the headers are checked by encoding them to JSON and
// decoding that the way the relay decodes the jsonb column. A limit
// violation also matches errors.As(err, **LimitError).
func (m *Message) Validate() error {
	_, err := m.check()
	return err
}

// check validates m and returns its headers as the JSON text to insert.
func (m *Message) check() ([]byte, error) {
	switch {
	case m.RoutingKey == "":
		return nil, invalid("routing key is empty")
	case m.Payload == nil:
		return nil, invalid("payload is nil")
	}
	contentType := m.ContentType
	if contentType == "" {
		contentType = DefaultContentType
	}
	if err := CheckProperties(m.Exchange, m.RoutingKey, contentType); err != nil {
		return nil, fmt.Errorf("outbox: %w: %w", ErrInvalidMessage, err)
	}
	props := m.Properties()
	if err := CheckAMQPProperties(props); err != nil {
		return nil, fmt.Errorf("outbox: %w: %w", ErrInvalidMessage, err)
	}
	if m.MessageID != "" {
		if _, err := uuid.Parse(m.MessageID); err != nil {
			return nil, invalid("message id %q is not a UUID", m.MessageID)
		}
	}
	if len(m.Headers) == 0 {
		return []byte("{}"), nil
	}
	b, err := json.Marshal(m.Headers)
	if err != nil {
		return nil, invalid("headers: %v", err)
	}
	if hasEscapedNUL(b) {
		return nil, invalid("headers: contain U+0000, which jsonb cannot store")
	}
	if _, err := DecodeRowHeaders(b, DefaultFrameMax, props); err != nil {
		return nil, fmt.Errorf("outbox: %w: %w", ErrInvalidMessage, err)
	}
	return b, nil
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
	props       AMQPProperties
}

func (m *Message) row() (row, error) {
	headers, err := m.check()
	if err != nil {
		return row{}, err
	}
	r := row{
		messageID:   m.MessageID,
		exchange:    m.Exchange,
		routingKey:  m.RoutingKey,
		payload:     m.Payload,
		contentType: m.ContentType,
		headers:     headers,
		props:       m.Properties(),
	}
	if r.messageID == "" {
		r.messageID = uuid.NewString()
	}
	if r.contentType == "" {
		r.contentType = DefaultContentType
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
