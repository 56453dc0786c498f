package testenv

import (
	"net"
	"net/url"
	"sync"
	"testing"
)

// Proxy is a TCP proxy on loopback for fault injection: it forwards to a
// target while up, refuses connections while down, and can cut every open
// connection at once.
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	up    bool
	held  bool
	conns map[net.Conn]struct{}
	// accepted counts the connections let through: for a broker behind
	// the proxy, the connections its client opened.
	accepted int
	wg       sync.WaitGroup
}

// NewProxy starts a proxy to target (host:port), initially up or down;
// it stops when the test ends.
func NewProxy(t testing.TB, target string, up bool) *Proxy {
	t.Helper()
	return NewProxyOn(t, "127.0.0.1:0", target, up)
}

// NewProxyOn is NewProxy listening on addr: "127.0.0.2:0" reaches a
// service on 127.0.0.1 by a loopback address its certificate does not
// name.
func NewProxyOn(t testing.TB, addr, target string, up bool) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &Proxy{ln: ln, target: target, up: up, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetUp lets new connections through (true) or refuses them (false).
// Going down also cuts the open ones.
func (p *Proxy) SetUp(up bool) {
	p.mu.Lock()
	p.up = up
	p.mu.Unlock()
	if !up {
		p.Cut()
	}
}

// Accepted is how many connections the proxy has let through.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Hold makes the open connections silent (true): bytes are read and
// dropped in both directions, as when a peer hangs or a network partition
// swallows packets without resetting anything. Hold(false) resumes
// forwarding (the dropped bytes are gone).
func (p *Proxy) Hold(held bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held = held
}

func (p *Proxy) isHeld() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}

// Cut closes every open connection, as a network failure would.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		up := p.up
		p.mu.Unlock()
		if !up {
			_ = c.Close()
			continue
		}
		up2, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up2] = struct{}{}, struct{}{}
		p.accepted++
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up2)
		go p.pipe(up2, c)
	}
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.isHeld() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

func (p *Proxy) close() {
	_ = p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

// BrokerAddr is the host:port of rawURL, for a proxy's target.
func BrokerAddr(t testing.TB, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// WithHost is rawURL pointing at addr (a proxy, a silent peer) instead.
func WithHost(t testing.TB, rawURL, addr string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = addr
	return u.String()
}
