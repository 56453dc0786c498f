package cli

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"
)

// A client that opens a connection and never finishes its request (a
// slowloris) is cut off by the server, instead of holding a connection
// and a goroutine for as long as it likes; so is an idle keep-alive
// connection, and a client that will not read its answer.
func TestHTTPServerClosesAStalledClient(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newHTTPServer(http.NotFoundHandler())
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /readyz HTTP/1.1\r\nHost: relay\r\n"); err != nil { // no blank line: never ends
		t.Fatal(err)
	}
	// The bound of the test, not of the server: the server must close the
	// connection well before; a server without timeouts never does.
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	_, err = io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the server kept a connection whose request never ended")
	}
	if srv.IdleTimeout == 0 || srv.WriteTimeout == 0 {
		t.Errorf("idle timeout %s, write timeout %s: a keep-alive or a client that does not read holds a connection for ever",
			srv.IdleTimeout, srv.WriteTimeout)
	}
}
