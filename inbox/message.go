package inbox

import (
	"context"
	"math"
	"reflect"
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
	// headers of a retried message and the broker's x-death. On a delivery
	// that did not come back from this consumer's retry queues the
	// x-inbox-* headers are removed: someone else set them.
	Headers amqp.Table
	// Exchange and RoutingKey are those the message was first published
	// with, also when it comes back from a retry queue.
	Exchange   string
	RoutingKey string
	// Attempt is 1 on the first delivery and grows by one with each retry.
	// A redelivery after a crash or a lost connection is the same attempt.
	// It is read from HeaderAttempts only on a delivery that came back from
	// one of this consumer's retry queues (see Config.Queue); anywhere else
	// the header may be a publisher's, and the message starts at 1.
	Attempt   int
	Timestamp time.Time
	// The AMQP properties the producer set (an outbox row's type,
	// correlation_id, reply_to, priority and app_id columns); empty or 0
	// when not set. Retry copies keep them.
	Type          string
	CorrelationID string
	ReplyTo       string
	Priority      uint8
	AppID         string
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
	// HeaderTrimmed (string, dead-letter queue only) is set on a copy whose
	// headers did not fit in one AMQP frame: it names the headers removed
	// to make it fit, with their sizes.
	HeaderTrimmed = "x-inbox-trimmed-headers"
)

// ownHeaderPrefix starts every header the consumer sets.
const ownHeaderPrefix = "x-inbox-"

func isOwnHeader(k string) bool { return strings.HasPrefix(k, ownHeaderPrefix) }

// Values of HeaderDeadReason.
const (
	DeadReasonPermanent   = "permanent"     // the handler returned Permanent(err)
	DeadReasonMaxAttempts = "max_attempts"  // MaxAttempts transient failures
	DeadReasonNoMessageID = "no_message_id" // cannot be deduplicated, never processed
	// DeadReasonHeadersTooLarge: the message failed and its retry copy
	// (its headers plus the x-inbox-* ones) would not fit in one AMQP
	// frame; it is dead-lettered instead, with headers trimmed (see
	// HeaderTrimmed), since a frame too large closes the connection.
	DeadReasonHeadersTooLarge = "headers_too_large"
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
	v := reflect.ValueOf(h[HeaderAttempts])
	switch v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n = v.Int()
	case reflect.Uint8, reflect.Uint16, reflect.Uint32:
		n = int64(v.Uint())
	case reflect.Float32, reflect.Float64:
		n = floatAttempts(v.Float())
	case reflect.String:
		p, err := strconv.ParseInt(strings.TrimSpace(v.String()), 10, 64)
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

// fromRetryQueue reports whether d came back from one of queue's retry
// queues, the only place the consumer's own headers can be trusted: a
// retry queue dead-letters an expired copy through the default exchange
// with the main queue's name as routing key, and the broker puts that
// death first in x-death (most recent first). A publisher's message sent
// to the main queue, whatever x-inbox-* headers it carries, has no such
// record.
//
// Old retry queues (of delays no longer configured) still drain back, so
// any well-formed retry queue name of this queue counts. RabbitMQ before
// 3.13 keeps an x-death header a publisher set, so a publisher forging
// both x-death and x-inbox-attempts is not stopped here; one who sets
// only the inbox's headers is.
func fromRetryQueue(d amqp.Delivery, queue string) bool {
	if d.Exchange != "" || d.RoutingKey != queue {
		return false
	}
	deaths, _ := d.Headers["x-death"].([]any)
	if len(deaths) == 0 {
		return false
	}
	last, _ := deaths[0].(amqp.Table)
	q, _ := last["queue"].(string)
	reason, _ := last["reason"].(string)
	return reason == "expired" && isRetryQueue(queue, q)
}

// newMessage builds the handler's view of a delivery. trusted says whether
// its x-inbox-* headers are the consumer's own (see fromRetryQueue); if
// not, they are dropped and the message counts as never attempted.
func newMessage(d amqp.Delivery, trusted bool) Message {
	h := d.Headers
	if !trusted {
		h = withoutOwnHeaders(h)
	}
	return Message{
		ID:          d.MessageId,
		Body:        d.Body,
		ContentType: d.ContentType,
		Headers:     h,
		Exchange:    stringHeader(h, HeaderOriginalExchange, d.Exchange),
		RoutingKey:  stringHeader(h, HeaderOriginalRoutingKey, d.RoutingKey),
		Attempt:     attemptsOf(h) + 1,
		Timestamp:   d.Timestamp,

		Type:          d.Type,
		CorrelationID: d.CorrelationId,
		ReplyTo:       d.ReplyTo,
		Priority:      d.Priority,
		AppID:         d.AppId,
	}
}

// withoutOwnHeaders returns h without x-inbox-* headers; h itself when it
// has none, which is the usual case and costs no copy.
func withoutOwnHeaders(h amqp.Table) amqp.Table {
	own := false
	for k := range h {
		own = own || isOwnHeader(k)
	}
	if !own {
		return h
	}
	out := make(amqp.Table, len(h))
	for k, v := range h {
		if !isOwnHeader(k) {
			out[k] = v
		}
	}
	return out
}

// brokerHeaders are added by RabbitMQ on dead-lettering and redelivery; a
// copy we publish starts without them so they describe only its own trip.
var brokerHeaders = []string{"x-death", "x-first-death-exchange", "x-first-death-queue",
	"x-first-death-reason", "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
	"x-delivery-count"}

// copyOf is the publishing that carries d to a retry or dead-letter queue,
// with the headers of m (d's, less any untrusted x-inbox-* ones) and extra
// set. The message-id and every property the handler can see are kept; the
// user-id is dropped because the broker checks it against the publishing
// connection's user.
func copyOf(d amqp.Delivery, m Message, extra amqp.Table) amqp.Publishing {
	h := make(amqp.Table, len(m.Headers)+len(extra)+2)
	for k, v := range m.Headers {
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
