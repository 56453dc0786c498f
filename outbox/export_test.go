package outbox

// HeaderTableSize exposes the encoded size of a header document to the
// tests that compare it with the migration's SQL function.
func HeaderTableSize(raw []byte) (int, error) {
	_, size, _, err := decodeTree(raw)
	return size, err
}

// Header document builders shared with the database tests.
var (
	Nested       = nested
	WideArray    = wideArray
	WideObject   = wideObject
	StringOfSize = stringOfSize
)
