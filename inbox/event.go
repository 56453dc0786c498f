package inbox

// EventKind says what an Event reports.
type EventKind int

// The kinds of Event.
const (
	// EventApplied: the handler succeeded and its transaction committed.
	EventApplied EventKind = iota + 1
	// EventDuplicate: the inbox already held the message; acked unhandled.
	EventDuplicate
	// EventRetried: a transient failure; a copy went to a retry queue.
	EventRetried
	// EventDeadLettered: the message went to the dead-letter queue.
	EventDeadLettered
	// EventRequeued: the message could not be forwarded to a retry or
	// dead-letter queue and was returned to its queue.
	EventRequeued
	// EventBreaker: the circuit breaker changed state (see Event.Breaker).
	EventBreaker
	// EventSubscribed: the consumer started receiving from the queue.
	EventSubscribed
	// EventUnsubscribed: it stopped (connection or channel lost, consumer
	// cancelled by the broker, breaker open, shutdown).
	EventUnsubscribed
)

var eventNames = map[EventKind]string{
	EventApplied: "applied", EventDuplicate: "duplicate", EventRetried: "retried",
	EventDeadLettered: "dead_lettered", EventRequeued: "requeued", EventBreaker: "breaker",
	EventSubscribed: "subscribed", EventUnsubscribed: "unsubscribed",
}

func (k EventKind) String() string {
	if s, ok := eventNames[k]; ok {
		return s
	}
	return "unknown"
}

// Event is what Config.OnEvent receives. Message events are reported after
// the delivery was acked (or the ack failed: see AckErr).
type Event struct {
	Kind      EventKind
	MessageID string
	// Attempt is the attempt the event concerns (Message.Attempt).
	Attempt int
	// Err is the handler's error for EventRetried and EventDeadLettered, the
	// forwarding error for EventRequeued, and why for EventUnsubscribed.
	Err error
	// AckErr is set when acking the delivery failed; the broker will
	// redeliver it, and the inbox will recognise it.
	AckErr error
	// DeadReason is set for EventDeadLettered.
	DeadReason string
	// Breaker is the new state for EventBreaker.
	Breaker BreakerState
}
