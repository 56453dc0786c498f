// Package migrations holds the relay's schema as numbered goose SQL files,
// embedded in the binary, and applies them.
//
// Migrations run in one schema: the one UpSchema names (created if
// missing), or the connection's current schema (Up), so one database can
// hold several independent outboxes (one per schema). They are recorded in
// the relay's own goose version table, VersionTable, so an application
// migrating the same schema with goose keeps its history to itself; a
// history an earlier relay left in goose's default table is carried over
// once (UpSchema). Script prints the same SQL for other migration tools,
// and Grants the rights of least-privilege roles.
// Applying is safe to repeat and safe to run from several processes at once:
// a Postgres advisory lock serialises concurrent runs, and an already applied
// version is skipped.
package migrations
