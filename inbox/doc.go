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
//   - After BreakerThreshold consecutive transient failures the consumer
//     stops pulling messages for BreakerCooldown, then lets one message
//     through as a trial before resuming fully.
//
// The consumer owns its connection (it does not use the client's
// experimental recovery): it dials the URL list in turn with jittered
// backoff and subscribes again after a lost connection, a closed channel or
// a consumer cancelled by the broker.
//
// Inbox rows of this consumer older than RetentionWindow are deleted in
// small batches. The window must exceed the longest time a copy of a
// message can still arrive (the relay's retry horizon plus the retry delays
// here plus the time messages wait in the queue); a copy arriving after its
// inbox row was deleted would be applied again.
package inbox
