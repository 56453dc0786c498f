// Package amqpconn owns a broker connection for the relay and the inbox
// consumer, so that dialling, failover and reconnecting are written once.
//
// A Manager keeps one connection open until its Run's context ends. We own
// the reconnect loop rather than relying on amqp091-go's experimental
// recovery, so every state change stays observable.
//
// Guarantees:
//   - Dialling honours its context throughout: during the TCP connect and
//     during the AMQP handshake, so a peer that accepts TCP and never
//     speaks cannot hold a shutdown for the handshake timeout (10 s).
//   - The URLs are a failover list, tried in turn. After a failed dial or a
//     lost connection the next URL is tried first, so a node that just
//     failed is tried last. A node the owner abandons for making no
//     progress (Abandon: confirms stopped on a live connection) is left at
//     once, without backoff, and skipped until every other URL failed to
//     dial.
//   - Reconnecting backs off with full jitter (internal/backoff), after a
//     failed dial and after a lost connection alike, so clients that lose
//     one node do not return to the next in lockstep. The streak of
//     failures that sets the delay ends when a connection proves itself:
//     on opening when Config.SettleOnConnect is set (a publisher: a row
//     that kills connections is charged by the relay), otherwise when the
//     owner calls Settled (a consumer, once a message arrived: a delivery
//     that kills every connection before one arrives makes the delays
//     grow).
//   - connection.blocked and connection.unblocked are followed: Ready
//     waits for a connection that is open and not blocked; Wait and
//     Current do not look at blocking (a consumer's acks are what frees the
//     broker's memory).
//   - Why the last connection closed is kept, with whether the broker did
//     it on purpose (CONNECTION_FORCED: a shutdown or an operator), which
//     blames no message in flight; see Outage.
//   - Logs name a broker by host:port only, and the passwords in the URLs
//     are scrubbed from every error they quote.
//
// The owner keeps its own metrics: a Manager reports through Hooks.
package amqpconn
