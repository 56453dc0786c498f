package amqpconn

import (
	"bytes"
	"errors"
	"net"
	"testing"
)

// socket records what reaches the wire, one entry per write system call.
type socket struct {
	net.Conn
	writes [][]byte
	fail   error
	closed bool
}

func (s *socket) Write(p []byte) (int, error) {
	if s.fail != nil {
		return 0, s.fail
	}
	s.writes = append(s.writes, bytes.Clone(p))
	return len(p), nil
}

func (s *socket) Close() error { s.closed = true; return nil }

// Held writes reach the wire at Release, in one write and in order;
// unheld writes pass through at once; nil holds nothing.
func TestWritesCoalesceWhileHeld(t *testing.T) {
	t.Parallel()
	s := &socket{}
	w := &Writes{Conn: s}
	w.Hold()
	for _, p := range []string{"a", "bb", "ccc"} {
		if n, err := w.Write([]byte(p)); err != nil || n != len(p) {
			t.Fatalf("held write %q = %d, %v", p, n, err)
		}
	}
	if len(s.writes) != 0 {
		t.Fatalf("held writes reached the wire before Release: %q", s.writes)
	}
	if err := w.Release(); err != nil {
		t.Fatal(err)
	}
	if len(s.writes) != 1 || string(s.writes[0]) != "abbccc" {
		t.Fatalf("after Release the wire got %q, want one write \"abbccc\"", s.writes)
	}
	if _, err := w.Write([]byte("d")); err != nil || len(s.writes) != 2 || string(s.writes[1]) != "d" {
		t.Fatalf("an unheld write did not pass through: %q, %v", s.writes, err)
	}
	var none *Writes
	none.Hold()
	if err := none.Release(); err != nil {
		t.Fatal(err)
	}
}

// A release writes what is buffered even while another holder remains,
// so one holder's frames never wait for another's release; the buffer
// is written once it reaches flushAt, so it stays bounded.
func TestWritesReleaseFlushesWithOtherHolders(t *testing.T) {
	t.Parallel()
	s := &socket{}
	w := &Writes{Conn: s}
	w.Hold()
	w.Hold()
	_, _ = w.Write([]byte("mine"))
	_ = w.Release()
	if len(s.writes) != 1 || string(s.writes[0]) != "mine" {
		t.Fatalf("release with another holder left %q on the wire, want \"mine\"", s.writes)
	}
	big := bytes.Repeat([]byte{'x'}, flushAt)
	_, _ = w.Write(big)
	if len(s.writes) != 2 || len(s.writes[1]) != flushAt {
		t.Fatalf("a full buffer was not written: %d writes", len(s.writes))
	}
	_ = w.Release()
}

// A flush that fails closes the socket and fails every later write, so
// the client sees its connection fail.
func TestWritesFailedFlushClosesSocket(t *testing.T) {
	t.Parallel()
	broken := errors.New("broken pipe")
	s := &socket{}
	w := &Writes{Conn: s}
	w.Hold()
	_, _ = w.Write([]byte("lost"))
	s.fail = broken
	if err := w.Release(); !errors.Is(err, broken) {
		t.Fatalf("Release = %v, want %v", err, broken)
	}
	if !s.closed {
		t.Fatal("the socket stayed open after a failed flush")
	}
	s.fail = nil
	if _, err := w.Write([]byte("later")); !errors.Is(err, broken) {
		t.Fatalf("a write after a failed flush = %v, want %v", err, broken)
	}
}
