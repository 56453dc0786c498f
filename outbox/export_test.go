package outbox

// HeaderTableSize exposes the encoded size of a header document to the
// tests that compare it with the migration's SQL function.
func HeaderTableSize(raw []byte) (int, error) {
	_, size, _, err := decodeTree(raw)
	return size, err
}
