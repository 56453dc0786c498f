package amqpconn

import (
	"net"
	"sync"
)

// flushAt is how many held bytes Writes buffers before it writes them
// anyway: a segment of 500 small messages is a few writes, not 500, and
// the buffer stays small whatever the segment holds.
const flushAt = 64 << 10

// Writes is a connection's socket, which coalesces writes while a
// publisher holds it. amqp091-go flushes its buffer after every message
// (method, header and body frames), so a segment of n messages costs n
// write system calls and n small TCP segments, each of which the broker
// reads on its own: in a drain that was a fifth of the relay's CPU.
// Between Hold and Release the writes are buffered (up to flushAt) and
// Release writes them at once.
//
// Anything written while held (a heartbeat, another channel's frames)
// waits for the next Release or flushAt, so a holder must not wait for
// the broker while it holds: hold around writing a segment, release
// before awaiting its confirms. Release always writes what is buffered,
// even when another holder remains, so nobody's frames wait for another
// holder's release. A write that fails while flushing closes the socket,
// so the client sees the connection fail as it would have at once.
//
// A nil *Writes holds nothing: Hold and Release do nothing.
type Writes struct {
	net.Conn
	mu    sync.Mutex
	holds int
	buf   []byte
	err   error // a failed flush: later writes fail with it
}

// Hold starts buffering the connection's writes.
func (w *Writes) Hold() {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.holds++
	w.mu.Unlock()
}

// Release ends a Hold and writes what is buffered.
func (w *Writes) Release() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.holds > 0 {
		w.holds--
	}
	return w.flushLocked()
}

// Write buffers p while held, else writes it (after what is buffered).
func (w *Writes) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	if w.holds == 0 {
		if err := w.flushLocked(); err != nil {
			return 0, err
		}
		return w.Conn.Write(p)
	}
	w.buf = append(w.buf, p...)
	if len(w.buf) >= flushAt {
		if err := w.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (w *Writes) flushLocked() error {
	if w.err != nil {
		return w.err
	}
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.Conn.Write(w.buf)
	w.buf = w.buf[:0]
	if cap(w.buf) > 4*flushAt {
		w.buf = nil // one large message must not pin its buffer
	}
	if err != nil {
		w.err = err
		_ = w.Conn.Close()
	}
	return err
}
