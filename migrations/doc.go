// Package migrations holds the relay's schema as numbered goose SQL files,
// embedded in the binary, and applies them.
//
// Migrations run in the first schema of the connection's search_path, so
// one database can hold several independent outboxes (one per schema).
// Applying is safe to repeat and safe to run from several processes at once:
// a Postgres advisory lock serialises concurrent runs, and an already applied
// version is skipped.
package migrations
