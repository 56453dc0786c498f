// Package inbox is the consumer side of Outbox Relay: it turns RabbitMQ's
// at-least-once delivery into exactly-once effects on PostgreSQL.
//
// A Consumer reads a queue with manual acks. For each delivery it begins a
// transaction, inserts (consumer, message_id) into the inbox table, and only
// if that row is new calls the handler with the same transaction; it
// commits, then acks. The handler's writes and the inbox row commit
// together or not at all.
//
// Guarantees:
//   - A message's effect is applied at most once per consumer name: a second
//     copy (a relay republish, a redelivery after a lost ack, a retry copy)
//     finds the inbox row, is rolled back and acked without calling the
//     handler. A copy that arrives while the first is still in flight waits
//     on the primary key and then sees the committed row.
//   - A message is acked only after its transaction committed, or after a
//     copy of it was confirmed by the broker in a retry or dead-letter queue.
//     A crash at any instant therefore leads to a redelivery that is either
//     deduplicated or applied: never lost, never applied twice.
//   - A message without a message-id cannot be deduplicated: it is sent to
//     the dead-letter queue with reason no_message_id and never processed.
//   - A handler error is transient unless wrapped with Permanent. Transient
//     errors (including a handler panic and HandlerTimeout) are retried
//     through the broker: a copy goes to a retry queue whose TTL dead-letters
//     it back to the main queue, so the delay survives restarts and blocks
//     no other message. After MaxAttempts attempts, or at once for a
//     permanent error, the message goes to "<queue>.dead" with headers that
//     say why (see the Header constants).
//   - The x-inbox-* headers are trusted only on a delivery that came back
//     from one of this consumer's retry queues (the broker's x-death says
//     its last death was an expiry there, and it arrived through the
//     default exchange with the queue's name as routing key). On any other
//     delivery they are removed before the handler sees the message, and
//     it starts at attempt 1: a publisher setting x-inbox-attempts=999
//     cannot send a message straight to the dead-letter queue. (RabbitMQ
//     before 3.13 keeps an x-death header a publisher sets, so one who
//     forges x-death as well is not stopped.)
//   - A message never makes the consumer loop on a copy the broker cannot
//     take. Properties and headers travel in one frame, which must not
//     exceed the connection's negotiated frame_max; a frame too large
//     makes RabbitMQ close the connection. A retry copy that would not fit
//     (with 2 KiB left for what the broker adds when it dead-letters it
//     back) is dead-lettered instead, with reason headers_too_large; a
//     dead-letter copy that would not fit loses its largest original
//     headers, never the x-inbox-* ones, and HeaderTrimmed lists what was
//     removed.
//   - A delivery that breaks the connection is isolated. A message the
//     client cannot read (a header array over 8,192 elements, say)
//     closes the connection before the consumer sees it, and the broker returns every unacked message, each charged
//     one delivery. After a connection lost while consuming, the consumer
//     takes messages one at a time (prefetch 1) for IsolationPeriod, so
//     the culprit is alone in flight each time it strikes again, and the
//     main queue's delivery limit (x-delivery-limit, on by default in
//     DeclareTopology: DefaultDeliveryLimit) moves it to "<queue>.dead"
//     without the messages that were prefetched beside it. Such a message
//     costs at most the delivery limit in reconnects; it reaches the
//     dead-letter queue as it was, without x-inbox-* headers (its x-death
//     says delivery_limit), and an amqp091-go client cannot read it there
//     either: inspect it with the management UI or API.
//   - After BreakerThreshold consecutive transient failures the consumer
//     stops handling messages for BreakerCooldown, then lets one message
//     through as a trial before resuming fully. It keeps its subscription
//     and the messages already prefetched meanwhile: returning them would
//     charge each a delivery against the delivery limit at every pause,
//     and a long outage would dead-letter them.
//   - The passwords in AMQPURLs never appear in New's errors or in the
//     consumer's logs, which name a broker by host.
//
// The consumer owns its connection (it does not use the client's
// experimental recovery), through the connection manager it shares with
// the relay (internal/amqpconn): it dials the URL list in turn with
// jittered backoff, a node that just failed last, and gives up a dial as
// soon as Run's context ends, also mid-handshake. The reconnect backoff
// starts afresh only once a message arrived on a connection, so a
// delivery that breaks every connection first makes the delays grow. It
// subscribes again after a lost connection, a closed channel or a consumer
// cancelled by the broker.
//
// A node that keeps the connection but cannot deliver (cut off from the
// quorum queue's leader by a partition: deliveries just stop, with no
// cancel and no error) is found by a probe, a passive queue.declare every
// ProbeInterval on a channel of its own, which such a node answers with
// zero consumers. After ProbeTimeout of failed probes the consumer leaves
// the node for the next URL (the relay's rule, amqpconn.Manager.Abandon);
// the broker redelivers what was unacked there, and the inbox table
// recognises what was already applied.
//
// Inbox rows of this consumer older than RetentionWindow are deleted in
// small batches. The window must exceed the longest time a copy of a
// message can still arrive (the relay's retry horizon plus the retry delays
// here plus the time messages wait in the queue); a copy arriving after its
// inbox row was deleted would be applied again.
package inbox
