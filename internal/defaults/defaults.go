// Package defaults fills a configuration's unset fields, for the relay and
// the inbox alike.
package defaults

// Set sets *field to v when it holds its type's zero value.
func Set[T comparable](field *T, v T) {
	var zero T
	if *field == zero {
		*field = v
	}
}
