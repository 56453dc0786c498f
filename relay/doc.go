// Package relay is the engine of Outbox Relay: it claims due rows from the
// outbox table, publishes them to RabbitMQ with publisher confirms, and
// marks them.
//
// Guarantees:
//
//   - A row is marked published only after the broker acked it and did not
//     return it as unroutable (every message is sent with mandatory set, as
//     a persistent message, message-id = the row's message_id).
//
//   - Rows are claimed with SELECT ... FOR UPDATE SKIP LOCKED inside a
//     transaction that stays open until the batch is marked. If the relay
//     dies, Postgres ends the transaction and the rows are simply claimed
//     again: a crash can cause duplicates, never a loss. Several relays
//     share one table without publishing a row twice in the absence of
//     faults.
//
//   - A row that fails for what the broker said about it (returned,
//     nacked while others of its send were taken, too large, undecodable
//     headers, missing exchange) gets attempts+1, last_error and a later
//     available_at (capped exponential backoff), and never stops the rows
//     behind it. After MaxAttempts it is parked: dead_at is set and it is
//     not retried until an operator requeues it.
//
//   - The broker's own trouble charges no row. When nothing is confirmed
//     for ConfirmTimeout while confirms are outstanding, or every message
//     of a send is nacked, the node makes no progress (a node cut off from
//     its cluster's majority keeps its clients' connections): the rows in
//     flight keep their attempts, and the relay leaves the node for the
//     next URL, to which it does not come back while another answers.
//
//   - When a channel is closed under a batch by the broker (a channel error
//     caused by one message), the unconfirmed rows are republished one at a
//     time to find the culprit, so only it is charged an attempt.
//
//   - When the connection is lost mid-batch, rows already confirmed are
//     marked and the others are released untouched: losing the broker is
//     not the rows' fault and costs them no attempt.
//
//   - Rows sharing an ordering_key are published in id order: a key's
//     rows are claimed as a run from its head (its first unpublished row),
//     one relay at a time, and the migration's insert trigger makes id
//     order commit order per key. A later row confirmed after an earlier
//     one of its key was refused or not confirmed is an overtake, counted
//     (StrictOrdering prevents it).
//     OrderingPolicy says whether a dead row holds its key's later rows
//     (block, the default) or not (skip).
//
// Wake-ups come from a statement-level insert trigger (pg_notify on the
// channel "<schema>.outbox"); PollInterval is only the fallback. With
// Retention set, published rows older than it are deleted in batches by
// one relay at a time; pending and dead rows never are.
package relay
