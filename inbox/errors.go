package inbox

import "errors"

// ErrNotConsuming is returned by Ready while the consumer is not receiving
// messages (not started, connecting, paused by the breaker, stopped).
var ErrNotConsuming = errors.New("inbox: not consuming")

// PermanentError marks a handler error that retrying cannot fix (a
// malformed body, a reference to something that will never exist). The
// message goes straight to the dead-letter queue.
type PermanentError struct {
	Err error
}

func (e *PermanentError) Error() string {
	if e.Err == nil {
		return "permanent error"
	}
	return "permanent: " + e.Err.Error()
}

func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so that the consumer dead-letters the message instead
// of retrying it. Permanent(nil) is nil. Detect it with errors.As and a
// *PermanentError, or with IsPermanent.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err (or an error it wraps) was made by
// Permanent.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}
