// Package config loads and validates the relay's configuration.
//
// Sources, later wins: built-in defaults, a YAML file (--config), environment
// variables prefixed RELAY_ (RELAY_BATCH_SIZE for batch_size), and command
// line flags (--batch-size). Every key is validated at load; the first
// problem is returned as one line naming the key, and never echoes a value
// that may hold a secret (URLs are reported without their password).
//
// Only this package and cmd/ use viper; the libraries take plain structs.
package config
