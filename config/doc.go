// Package config loads and validates the relay's configuration.
//
// Sources, later wins: built-in defaults, a YAML file (--config), environment
// variables prefixed RELAY_ (RELAY_BATCH_SIZE for batch_size), and command
// line flags (--batch-size). Every key is validated at load; the first
// problem is returned as one line naming the key.
//
// Secrets: an error shows the value it complains about only through
// internal/redact (every password masked: URL user info, password and
// sslpassword parameters, key=value DSNs, user:pass@host, each URL of a
// list) and quoted with Go's escapes, so a control character cannot break
// the line; whatever key the value was given under, since a URL pasted in
// the wrong place is still a secret. A library's error about a value is
// scrubbed of that value's passwords too. Config.NewLogger scrubs the
// configuration's passwords from every log line. FuzzSecretNeverEchoed
// holds this to account.
//
// database_url and listen_database_url take what pgx takes, a postgres://
// URL or a key=value DSN, and are parsed by pgconn at load, so a bad port
// or sslmode stops the binary at start.
//
// Only this package and cmd/ use viper; the libraries take plain structs.
package config

//go:generate go run ./internal/gendoc -o ../docs/configuration.md
