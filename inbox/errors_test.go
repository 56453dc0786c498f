package inbox_test

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/outboxrelay/outboxrelay/inbox"
)

func TestPermanentIsDetectableThroughWrapping(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("apply order 7: %w", inbox.Permanent(io.ErrUnexpectedEOF))
	var p *inbox.PermanentError
	if !errors.As(err, &p) || !inbox.IsPermanent(err) {
		t.Fatalf("Permanent not found in %v", err)
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("the cause is not reachable with errors.Is")
	}
	if inbox.Permanent(nil) != nil {
		t.Errorf("Permanent(nil) is not nil")
	}
	if inbox.IsPermanent(io.EOF) {
		t.Errorf("a plain error is permanent")
	}
}
