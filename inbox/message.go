package inbox

import (
	"context"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Handler applies one message inside tx, the transaction that also holds
// the message's inbox row. Write through tx only: writes on another
// connection would not roll back with the inbox row. Return nil to commit,
// an error to roll back and retry later, or Permanent(err) to roll back and
// dead-letter the message. ctx ends after HandlerTimeout.
type Handler func(ctx context.Context, tx pgx.Tx, m Message) error

// Message is what a handler sees of a delivery.
type Message struct {
	// ID is the AMQP message-id (the outbox row's message_id).
	ID          string
	Body        []byte
	ContentType string
	// Headers are the AMQP headers as delivered, including the x-inbox-*
	// headers of a retried message and the broker's x-death.
	Headers amqp.Table
	// Exchange and RoutingKey are those the message was first published
	// with, also when it comes back from a retry queue.
	Exchange   string
	RoutingKey string
	// Attempt is 1 on the first delivery and grows by one with each retry.
	// A redelivery after a crash or a lost connection is the same attempt.
	Attempt   int
	Timestamp time.Time
}

// Headers the consumer sets on the copies it publishes to retry queues and
// to the dead-letter queue.
const (
	// HeaderAttempts (long int) is the number of attempts already made.
	HeaderAttempts = "x-inbox-attempts"
	// HeaderLastError (string) is the error of the last attempt.
	HeaderLastError = "x-inbox-last-error"
	// HeaderDeadReason (string, dead-letter queue only) is one of the
	// DeadReason constants.
	HeaderDeadReason = "x-inbox-dead-reason"
	// HeaderConsumer (string, dead-letter queue only) is the consumer name.
	HeaderConsumer = "x-inbox-consumer"
	// HeaderOriginalExchange and HeaderOriginalRoutingKey keep where the
	// message was first published, since the retry path re-routes it.
	HeaderOriginalExchange   = "x-inbox-original-exchange"
	HeaderOriginalRoutingKey = "x-inbox-original-routing-key"
)

// Values of HeaderDeadReason.
const (
	DeadReasonPermanent   = "permanent"     // the handler returned Permanent(err)
	DeadReasonMaxAttempts = "max_attempts"  // MaxAttempts transient failures
	DeadReasonNoMessageID = "no_message_id" // cannot be deduplicated, never processed
)

// maxErrorHeader bounds HeaderLastError: an error message is for a human,
// and a huge one would bloat every copy.
const maxErrorHeader = 1024

// maxAttemptsHeader bounds what we believe from a header another party may
// have set.
const maxAttemptsHeader = 1 << 20

// attemptsOf decodes HeaderAttempts. AMQP tables carry integers in several
// widths (and other clients may send strings or floats); anything
// unreadable, negative or absurd counts as no attempts so far.
func attemptsOf(h amqp.Table) int {
	var n int64
	switch v := h[HeaderAttempts].(type) {
	case int8:
		n = int64(v)
	case int16:
		n = int64(v)
	case int32:
		n = int64(v)
	case int64:
		n = v
	case int:
		n = int64(v)
	case uint8:
		n = int64(v)
	case uint16:
		n = int64(v)
	case uint32:
		n = int64(v)
	case float32:
		n = floatAttempts(float64(v))
	case float64:
		n = floatAttempts(v)
	case string:
		p, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0
		}
		n = p
	default:
		return 0
	}
	if n < 0 || n > maxAttemptsHeader {
		return 0
	}
	return int(n)
}

func floatAttempts(f float64) int64 {
	if math.IsNaN(f) || f < 0 || f > maxAttemptsHeader {
		return 0
	}
	return int64(f)
}

func stringHeader(h amqp.Table, key, def string) string {
	if s, ok := h[key].(string); ok {
		return s
	}
	return def
}

// newMessage builds the handler's view of a delivery.
func newMessage(d amqp.Delivery) Message {
	return Message{
		ID:          d.MessageId,
		Body:        d.Body,
		ContentType: d.ContentType,
		Headers:     d.Headers,
		Exchange:    stringHeader(d.Headers, HeaderOriginalExchange, d.Exchange),
		RoutingKey:  stringHeader(d.Headers, HeaderOriginalRoutingKey, d.RoutingKey),
		Attempt:     attemptsOf(d.Headers) + 1,
		Timestamp:   d.Timestamp,
	}
}

// brokerHeaders are added by RabbitMQ on dead-lettering and redelivery; a
// copy we publish starts without them so they describe only its own trip.
var brokerHeaders = []string{"x-death", "x-first-death-exchange", "x-first-death-queue",
	"x-first-death-reason", "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
	"x-delivery-count"}

// copyOf is the publishing that carries d to a retry or dead-letter queue,
// with extra headers set. The message-id and every property the handler can
// see are kept; the user-id is dropped because the broker checks it against
// the publishing connection's user.
func copyOf(d amqp.Delivery, extra amqp.Table) amqp.Publishing {
	h := make(amqp.Table, len(d.Headers)+len(extra)+2)
	for k, v := range d.Headers {
		h[k] = v
	}
	for _, k := range brokerHeaders {
		delete(h, k)
	}
	if _, ok := h[HeaderOriginalRoutingKey]; !ok {
		h[HeaderOriginalExchange] = d.Exchange
		h[HeaderOriginalRoutingKey] = d.RoutingKey
	}
	for k, v := range extra {
		h[k] = v
	}
	return amqp.Publishing{
		Headers:         h,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		AppId:           d.AppId,
		Body:            d.Body,
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut on a rune boundary so the header stays valid UTF-8.
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}
