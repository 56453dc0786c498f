package amqpconn_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/amqpconn"
	"github.com/outboxrelay/outboxrelay/internal/backoff"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// bundle is what a manager test watches: the hooks' reports, in order.
type bundle struct {
	connected chan bool
	blocked   chan time.Duration // -1 when blocked, the time spent when unblocked
	dialFails chan error
	lost      chan amqpconn.CloseReason
}

// setup starts a Manager over urls; it stops when the test ends, and the
// test fails if Run does not return then.
func setup(t *testing.T, name string, urls ...string) (*amqpconn.Manager, *bundle) {
	t.Helper()
	b := &bundle{
		connected: make(chan bool, 100),
		blocked:   make(chan time.Duration, 100),
		dialFails: make(chan error, 100),
		lost:      make(chan amqpconn.CloseReason, 100),
	}
	m := amqpconn.New(amqpconn.Config{
		URLs:            urls,
		Name:            name,
		Backoff:         backoff.Policy{Base: time.Millisecond, Max: 10 * time.Millisecond},
		SettleOnConnect: true,
		Hooks: amqpconn.Hooks{ // hooks must not block: a report beyond the buffers is dropped
			Connected: func(up bool) { send(b.connected, up) },
			Blocked: func(on bool, spent time.Duration) {
				if on {
					spent = -1
				}
				send(b.blocked, spent)
			},
			DialFailed: func(err error) { send(b.dialFails, err) },
			Lost:       func(r amqpconn.CloseReason) { send(b.lost, r) },
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = m.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
	return m, b
}

func send[T any](c chan<- T, v T) {
	select {
	case c <- v:
	default:
	}
}

// next returns the next value from c, failing the test after a generous
// deadline (the condition is awaited, never timed).
func next[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// ready waits for a usable connection.
func ready(t *testing.T, m *amqpconn.Manager) *amqp.Connection {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := m.Ready(ctx)
	if err != nil {
		t.Fatalf("Ready: %v", err)
	}
	return c
}

// silentPeer accepts TCP connections and never says a word; accepted
// reports each connection, and the peer's reads end when the client
// closes its side.
func silentPeer(t *testing.T) (addr string, accepted <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acc := make(chan net.Conn, 10)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			acc <- c
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
		close(acc)
		for c := range acc {
			_ = c.Close()
		}
	})
	return ln.Addr().String(), acc
}

// Dialling a broker that accepts TCP but never
// speaks honours cancellation. Cancelling during the AMQP handshake makes
// Dial return the context's error and close the socket (the peer reads
// EOF) long before the 10 s handshake timeout would have.
func TestDialHonoursCancellationDuringHandshake(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	addr, accepted := silentPeer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		conn *amqp.Connection
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, err := amqpconn.Dial(ctx, testenv.WithHost(t, env.AMQPURL, addr), amqp.Config{})
		done <- result{c, err}
	}()
	peer := next(t, accepted, "the dial to reach the silent peer")
	// The client opens with the 8-byte protocol header, then waits for
	// connection.start, which never comes.
	if _, err := io.ReadFull(peer, make([]byte, 8)); err != nil {
		t.Fatalf("read protocol header: %v", err)
	}
	cancel()
	var r result
	select {
	case r = <-done:
	case <-time.After(5 * time.Second): // the handshake timeout is 10 s
		t.Fatal("Dial did not return after its context was cancelled")
	}
	if r.conn != nil || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Dial = %v, %v; want nil, context.Canceled", r.conn, r.err)
	}
	_ = peer.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("peer read after cancel = %d, %v; want EOF (the client closed its socket)", n, err)
	}
}

// A Manager whose only node is silent stops when its context ends: Run
// does not sit in the handshake (setup's cleanup awaits Run's return).
func TestRunStopsDuringSilentHandshake(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	addr, accepted := silentPeer(t)
	m, _ := setup(t, testenv.Name("amqpconn"), testenv.WithHost(t, env.AMQPURL, addr))
	next(t, accepted, "the dial to reach the silent peer")
	if m.Connected() {
		t.Fatal("connected to a peer that never spoke")
	}
}

// The failover list: a node that refuses connections is passed over, and
// after a connection is lost the next node is tried first, so the node
// that just failed is tried last.
func TestRotationSkipsDeadNode(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	target := testenv.BrokerAddr(t, env.AMQPURL)
	dead := testenv.NewProxy(t, target, false)
	a := testenv.NewProxy(t, target, true)
	b := testenv.NewProxy(t, target, true)
	m, bu := setup(t, testenv.Name("amqpconn"),
		testenv.WithHost(t, env.AMQPURL, dead.Addr()),
		testenv.WithHost(t, env.AMQPURL, a.Addr()),
		testenv.WithHost(t, env.AMQPURL, b.Addr()))

	next(t, bu.dialFails, "the dead node's dial failure")
	if c := ready(t, m); c.RemoteAddr().String() != a.Addr() {
		t.Fatalf("connected to %s, want the next node %s", c.RemoteAddr(), a.Addr())
	}
	// a fails and stays down: the manager must go on to b, not back to a
	// (nor round to the dead node first).
	a.SetUp(false)
	next(t, bu.lost, "the lost connection")
	for i, want := range []bool{true, false, true} { // to a, a lost, to b
		if up := next(t, bu.connected, "the connection reports"); up != want {
			t.Fatalf("connection report %d = %v, want %v", i, up, want)
		}
	}
	if c := ready(t, m); c.RemoteAddr().String() != b.Addr() {
		t.Fatalf("reconnected to %s, want %s", c.RemoteAddr(), b.Addr())
	}
	select {
	case err := <-bu.dialFails:
		t.Fatalf("a dial failed after the loss (%v): the node that just failed was tried before the next one", err)
	default:
	}
}

// The close reason: a connection cut under the client is no outage; one the
// broker closes on purpose (CONNECTION_FORCED, here through the management
// API as an operator would) is.
func TestCloseReasonOutage(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	if env.ManagementURL == "" {
		t.Skip("no RELAY_TEST_MANAGEMENT_URL")
	}
	proxy := testenv.NewProxy(t, testenv.BrokerAddr(t, env.AMQPURL), true)
	name := testenv.Name("amqpconn")
	m, bu := setup(t, name, testenv.WithHost(t, env.AMQPURL, proxy.Addr()))
	ready(t, m)

	proxy.Cut()
	r := next(t, bu.lost, "the cut connection's loss")
	if r.Outage || r.Text == "" {
		t.Fatalf("cut: reason %+v, want a text and no outage", r)
	}
	if got := m.LastClose(); got != r {
		t.Fatalf("LastClose after the cut = %+v, want %+v", got, r)
	}

	ready(t, m)
	closeByManagement(t, env.ManagementURL, name)
	r = next(t, bu.lost, "the loss of the connection closed by the broker")
	if !r.Outage || !strings.Contains(r.Text, "CONNECTION_FORCED") {
		t.Fatalf("closed by the broker: reason %+v, want an outage naming CONNECTION_FORCED", r)
	}
	if got := m.LastClose(); got != r {
		t.Fatalf("LastClose after the forced close = %+v, want %+v", got, r)
	}
}

// closeByManagement closes, through the management API, the connection
// whose connection_name is name (it may take the API a few seconds to list
// a new connection).
func closeByManagement(t *testing.T, mgmtURL, name string) {
	t.Helper()
	base := strings.TrimSuffix(mgmtURL, "/")
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}} // no idle connection for goleak to find
	testenv.Eventually(t, 30*time.Second, "the management API to close the connection", func() (bool, error) {
		resp, err := client.Get(base + "/api/connections?columns=name,client_properties")
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		var conns []struct {
			Name  string `json:"name"`
			Props struct {
				ConnectionName string `json:"connection_name"`
			} `json:"client_properties"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&conns); err != nil {
			return false, err
		}
		for _, c := range conns {
			if c.Props.ConnectionName != name {
				continue
			}
			req, _ := http.NewRequest(http.MethodDelete, base+"/api/connections/"+url.PathEscape(c.Name), nil)
			req.Header.Set("X-Reason", "amqpconn test")
			dr, err := client.Do(req)
			if err != nil {
				return false, err
			}
			_ = dr.Body.Close()
			return dr.StatusCode/100 == 2, fmt.Errorf("DELETE: %s", dr.Status)
		}
		return false, fmt.Errorf("connection %q not listed yet", name)
	})
}

// connection.blocked and unblocked are followed: Ready refuses a blocked
// connection, Wait and Current still give it, and the time spent blocked
// is reported. The shared broker must not be put under an alarm, so the
// notifications are injected by a proxy that forwards the real broker's
// frames and slips ours in between them.
func TestBlockedFollowsBroker(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	fp := newFrameProxy(t, testenv.BrokerAddr(t, env.AMQPURL))
	m, bu := setup(t, testenv.Name("amqpconn"), testenv.WithHost(t, env.AMQPURL, fp.addr()))
	conn := ready(t, m)

	done, cancel := context.WithCancel(context.Background())
	cancel() // Ready and Wait answer from the current state, then give up
	fp.inject(t, blockedFrame("amqpconn test alarm"))
	if spent := next(t, bu.blocked, "the blocked report"); spent != -1 {
		t.Fatalf("first blocked report = %v, want blocked", spent)
	}
	if !m.Blocked() {
		t.Fatal("Blocked() = false after connection.blocked")
	}
	if c, err := m.Ready(done); err == nil {
		t.Fatalf("Ready gave a connection (%s) while the broker blocks publishing", c.LocalAddr())
	}
	if c, err := m.Wait(done); err != nil || c != conn {
		t.Fatalf("Wait while blocked = %v, %v; want the open connection", c, err)
	}
	if m.Current() != conn {
		t.Fatal("Current while blocked is not the open connection")
	}

	fp.inject(t, unblockedFrame())
	if spent := next(t, bu.blocked, "the unblocked report"); spent < 0 {
		t.Fatalf("second blocked report = %v, want the time spent blocked", spent)
	}
	if m.Blocked() {
		t.Fatal("Blocked() = true after connection.unblocked")
	}
	if c, err := m.Ready(done); err != nil || c != conn {
		t.Fatalf("Ready after unblocking = %v, %v; want the open connection", c, err)
	}
}

// frameProxy forwards one AMQP connection to the broker, passing the
// broker's frames to the client whole, so that a test can insert frames
// of its own between them.
type frameProxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	client net.Conn // where the broker's frames go; nil until accepted
	ready  chan struct{}
	wg     sync.WaitGroup
}

func newFrameProxy(t *testing.T, target string) *frameProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &frameProxy{ln: ln, target: target, ready: make(chan struct{})}
	var conns []net.Conn
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", target)
		if err != nil {
			_ = c.Close()
			return
		}
		p.mu.Lock()
		p.client = c
		conns = append(conns, c, up)
		p.mu.Unlock()
		close(p.ready)
		p.wg.Add(2)
		go func() { // client to broker: as is
			defer p.wg.Done()
			_, _ = io.Copy(up, c)
			_ = up.Close()
		}()
		go func() { // broker to client: frame by frame
			defer p.wg.Done()
			defer c.Close()
			hdr := make([]byte, 7)
			for {
				if _, err := io.ReadFull(up, hdr); err != nil {
					return
				}
				body := make([]byte, binary.BigEndian.Uint32(hdr[3:])+1) // payload and frame-end
				if _, err := io.ReadFull(up, body); err != nil {
					return
				}
				p.mu.Lock()
				_, err := c.Write(append(hdr, body...))
				p.mu.Unlock()
				if err != nil {
					return
				}
				hdr = make([]byte, 7)
			}
		}()
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *frameProxy) addr() string { return p.ln.Addr().String() }

// inject sends frame to the client between two of the broker's frames.
func (p *frameProxy) inject(t *testing.T, frame []byte) {
	t.Helper()
	<-p.ready
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.client.Write(frame); err != nil {
		t.Fatalf("inject: %v", err)
	}
}

// methodFrame encodes a method frame on channel 0.
func methodFrame(class, method uint16, args []byte) []byte {
	payload := binary.BigEndian.AppendUint16(nil, class)
	payload = binary.BigEndian.AppendUint16(payload, method)
	payload = append(payload, args...)
	f := []byte{1, 0, 0} // frame type method, channel 0
	f = binary.BigEndian.AppendUint32(f, uint32(len(payload)))
	f = append(f, payload...)
	return append(f, 0xCE)
}

// blockedFrame is connection.blocked (10, 60) with a shortstr reason.
func blockedFrame(reason string) []byte {
	return methodFrame(10, 60, append([]byte{byte(len(reason))}, reason...))
}

// unblockedFrame is connection.unblocked (10, 61).
func unblockedFrame() []byte { return methodFrame(10, 61, nil) }

func TestOutage(t *testing.T) {
	t.Parallel()
	forced := &amqp.Error{Code: amqp.ConnectionForced, Reason: "CONNECTION_FORCED - broker forced connection closure", Server: true}
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"forced by the broker", forced, true},
		{"forced, wrapped", fmt.Errorf("inbox: %w", errors.Join(errors.New("lost"), forced)), true},
		{"same code from the client", &amqp.Error{Code: amqp.ConnectionForced}, false},
		{"frame error", &amqp.Error{Code: amqp.FrameError, Reason: "EOF"}, false},
		{"broker's frame error", &amqp.Error{Code: amqp.FrameError, Server: true}, false},
		{"not an AMQP error", errors.New("connection closed"), false},
		{"nil", nil, false},
	}
	for _, tc := range cases {
		if got := amqpconn.Outage(tc.err); got != tc.want {
			t.Errorf("%s: Outage = %v, want %v", tc.name, got, tc.want)
		}
	}
}
