// Package outbox is the producer side of Outbox Relay: it writes messages
// into the outbox table inside the caller's own transaction.
//
// Guarantees:
//   - Enqueue writes all of its messages with one statement (one round trip),
//     or none of them: validation happens before anything is sent.
//   - The rows become visible to the relay only when the caller's
//     transaction commits; a rolled-back transaction publishes nothing.
//   - Each message gets a unique message_id (a UUID), sent to RabbitMQ as
//     the AMQP message-id; consumers deduplicate on it.
//   - Enqueue refuses a message AMQP 0-9-1 or RabbitMQ could never carry
//     (limits.go: short strings of 255 bytes, header tables of 8,192
//     entries, 32 levels and MaxHeaderTableBytes encoded). The relay
//     parks such rows with the same functions, and the table's CHECK
//     constraints refuse them from plain SQL, so all three agree.
//
// The package depends on pgx and the OpenTelemetry API only. Any plain SQL INSERT into the outbox
// table is equally valid; see the README for the column contract.
package outbox
