package inbox

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Topology describes what DeclareTopology declares.
type Topology struct {
	// Exchange is a durable exchange the main queue is bound to. Empty
	// means none: messages reach the queue through the default exchange,
	// with the queue name as routing key.
	Exchange string
	// ExchangeType is "topic" by default.
	ExchangeType string
	// Queue is the main queue (required).
	Queue string
	// BindingKeys bind Queue to Exchange (ignored without an Exchange).
	BindingKeys []string
	// RetryDelays must match the consumer's (default DefaultRetryDelays).
	RetryDelays []time.Duration
	// DeliveryLimit sets x-delivery-limit on the main queue (default
	// DefaultDeliveryLimit; negative sets none): a message returned to the
	// queue unacked more than that many times is moved by the broker to
	// the dead-letter queue. It is what removes a message that no consumer
	// can get past: one that crashes the process (beyond what a recovered
	// panic covers), or one the client cannot even read, which closes the
	// connection before the consumer sees it (see Config.IsolationPeriod).
	// Every other unacked return counts too (a consumer stopping with
	// messages in flight, a lost connection), so keep it well above the
	// number of such events a message may meet.
	//
	// A queue's x-delivery-limit cannot change once declared: declaring an
	// existing queue with another value fails (see DeclareTopology).
	DeliveryLimit int
}

// DefaultDeliveryLimit is Topology.DeliveryLimit's default. It is
// RabbitMQ 4's own default for quorum queues: high enough that restarts
// and lost connections do not dead-letter innocent messages, low enough
// that a message breaking connections costs a bounded number of them.
const DefaultDeliveryLimit = 20

// DeadQueue is the name of queue's dead-letter queue.
func DeadQueue(queue string) string { return queue + ".dead" }

// RetryQueue is the name of queue's retry queue for delay. Retry queues are
// named by their delay rather than by attempt number: a queue's TTL cannot
// change once declared, so changing RetryDelays then creates new queues
// instead of failing on the old ones (which keep draining back to the main
// queue until empty).
func RetryQueue(queue string, delay time.Duration) string {
	return queue + ".retry." + delayName(delay)
}

// delayName writes a delay in its largest whole unit: 500ms, 10s, 5m, 2h.
func delayName(d time.Duration) string {
	ms := d.Milliseconds()
	switch {
	case ms%3_600_000 == 0:
		return strconv.FormatInt(ms/3_600_000, 10) + "h"
	case ms%60_000 == 0:
		return strconv.FormatInt(ms/60_000, 10) + "m"
	case ms%1000 == 0:
		return strconv.FormatInt(ms/1000, 10) + "s"
	default:
		return strconv.FormatInt(ms, 10) + "ms"
	}
}

// DeclareTopology declares, idempotently, the durable exchange (if any),
// the main quorum queue bound with BindingKeys, its dead-letter queue and
// its retry queues. Every queue is a quorum queue, replicated in a
// cluster: a message waiting in a retry queue has already been acked from
// the main queue, so it must be as safe there. ctx is checked between
// declarations (the AMQP calls themselves take none).
//
// Declaring with arguments different from an existing queue's fails with
// PRECONDITION_FAILED (406), which closes ch. A main queue declared before
// the delivery limit was on by default has none: DeclareTopology then says
// so; set Topology.DeliveryLimit to -1 to keep that queue as it is, or
// move its messages and declare it again.
func DeclareTopology(ctx context.Context, ch *amqp.Channel, t Topology) error {
	if t.Queue == "" {
		return errors.New("inbox: Topology.Queue is required")
	}
	if t.ExchangeType == "" {
		t.ExchangeType = amqp.ExchangeTopic
	}
	if len(t.RetryDelays) == 0 {
		t.RetryDelays = DefaultRetryDelays
	}
	if t.Exchange != "" {
		if err := ch.ExchangeDeclare(t.Exchange, t.ExchangeType, true, false, false, false, nil); err != nil {
			return fmt.Errorf("inbox: declare exchange %q: %w", t.Exchange, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	args := amqp.Table{
		"x-queue-type": "quorum",
		// Messages the broker itself gives up on (x-delivery-limit, a
		// reject without requeue) land with the ones we dead-letter.
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": DeadQueue(t.Queue),
	}
	if t.DeliveryLimit == 0 {
		t.DeliveryLimit = DefaultDeliveryLimit
	}
	if t.DeliveryLimit > 0 {
		args["x-delivery-limit"] = int64(t.DeliveryLimit)
	}
	if _, err := ch.QueueDeclare(t.Queue, true, false, false, false, args); err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed && strings.Contains(ae.Reason, "x-delivery-limit") {
			return fmt.Errorf("inbox: declare queue %q: it exists with another delivery limit (set Topology.DeliveryLimit to match it, -1 for none): %w", t.Queue, err)
		}
		return fmt.Errorf("inbox: declare queue %q: %w", t.Queue, err)
	}
	if t.Exchange != "" {
		for _, key := range t.BindingKeys {
			if err := ch.QueueBind(t.Queue, key, t.Exchange, false, nil); err != nil {
				return fmt.Errorf("inbox: bind %q to %q with %q: %w", t.Queue, t.Exchange, key, err)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return declareOwnQueues(ch, t.Queue, t.RetryDelays)
}

// declareOwnQueues declares the dead-letter and retry queues. The consumer
// calls it on every subscription, so a retry copy always has somewhere to
// go even when DeclareTopology was given other delays.
func declareOwnQueues(ch *amqp.Channel, queue string, delays []time.Duration) error {
	if _, err := ch.QueueDeclare(DeadQueue(queue), true, false, false, false,
		amqp.Table{"x-queue-type": "quorum"}); err != nil {
		return fmt.Errorf("inbox: declare queue %q: %w", DeadQueue(queue), err)
	}
	seen := map[time.Duration]bool{}
	for _, d := range delays {
		if seen[d] {
			continue
		}
		seen[d] = true
		name := RetryQueue(queue, d)
		_, err := ch.QueueDeclare(name, true, false, false, false, amqp.Table{
			"x-queue-type":              "quorum",
			"x-message-ttl":             d.Milliseconds(),
			"x-dead-letter-exchange":    "",
			"x-dead-letter-routing-key": queue,
			// At-least-once dead-lettering: the broker moves an expired
			// message back with publisher confirms internally, so a retry
			// copy cannot be lost on its way back (needs reject-publish).
			"x-dead-letter-strategy": "at-least-once",
			"x-overflow":             "reject-publish",
		})
		if err != nil {
			return fmt.Errorf("inbox: declare queue %q: %w", name, err)
		}
	}
	return nil
}

// isRetryQueue reports whether name is one of queue's retry queues: the
// queue name, ".retry.", then a delay as delayName writes it.
func isRetryQueue(queue, name string) bool {
	d, ok := strings.CutPrefix(name, queue+".retry.")
	if !ok {
		return false
	}
	for _, unit := range []string{"ms", "s", "m", "h"} {
		if n, ok := strings.CutSuffix(d, unit); ok {
			v, err := strconv.ParseUint(n, 10, 63)
			return err == nil && v > 0 && n[0] != '0'
		}
	}
	return false
}
