package inbox

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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
	// DeliveryLimit, if positive, sets x-delivery-limit on the main queue:
	// a message redelivered that many times without an ack (the process
	// crashes on it, beyond what a recovered panic covers) is moved by the
	// broker to the dead-letter queue.
	DeliveryLimit int
}

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
// PRECONDITION_FAILED (406), which closes ch.
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
	if t.DeliveryLimit > 0 {
		args["x-delivery-limit"] = int64(t.DeliveryLimit)
	}
	if _, err := ch.QueueDeclare(t.Queue, true, false, false, false, args); err != nil {
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
