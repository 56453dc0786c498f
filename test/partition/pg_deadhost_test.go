//go:build partition

package partition

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// A failed primary's host usually does not refuse connections: it is gone,
// and packets to it vanish, or a load balancer accepts them and nothing
// answers. The first host of the multi-host URL here accepts TCP
// connections and never says a word; the relay, given no connect_timeout,
// must still give up on it, try the next host, and publish every row.
func TestPGFailoverSilentFirstHost(t *testing.T) {
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, true)

	u, err := url.Parse(env.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	silent := pgSilentHost(t)
	multi := strings.Replace(dsn, "@"+u.Host+"/", "@"+silent.addr+","+u.Host+"/", 1) + "&target_session_attrs=read-write"
	if strings.Contains(multi, "connect_timeout") || !strings.Contains(multi, silent.addr+",") {
		t.Fatalf("bad multi-host URL %q", multi)
	}

	const rows = 200
	msgs := make([]outbox.Message, rows)
	for i := range msgs {
		msgs[i] = outbox.Message{MessageID: uuid.NewString(), RoutingKey: queue, OrderingKey: fmt.Sprintf("key-%d", i%10), Payload: []byte("x")}
	}
	if _, err := outbox.Enqueue(context.Background(), pool, msgs...); err != nil {
		t.Fatal(err)
	}
	r := testenv.StartRelayProc(t, append([]string{"RELAY_DATABASE_URL=" + multi, "RELAY_AMQP_URL=" + env.AMQPURL}, pgRelaySettings...)...)
	start := time.Now()
	testenv.Eventually(t, 2*time.Minute, "every row published past the silent host", func() (bool, error) {
		var left int
		err := pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&left)
		return left == 0, err
	})
	t.Logf("published %d rows %.1fs after the start; the silent host took %d connections", rows, time.Since(start).Seconds(), silent.accepted())
	got := testenv.ConsumeDistinct(t, ch, queue, rows, time.Minute)
	if v, _ := testenv.OrderViolations(t, pool, got); v > 0 {
		t.Errorf("%d per-key order violations", v)
	}
	pgAwaitMetric(t, r, "outboxrelay_relay_listener_connected", "1")
	testenv.Eventually(t, time.Minute, "ready", func() (bool, error) {
		resp, err := http.Get(r.URL() + "/readyz")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

// pgSilent accepts TCP connections and never reads or writes: a host that
// swallows a client's packets.
type pgSilent struct {
	addr  string
	mu    sync.Mutex
	conns []net.Conn
}

func pgSilentHost(t *testing.T) *pgSilent {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &pgSilent{addr: ln.Addr().String()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, c := range s.conns {
			_ = c.Close()
		}
	})
	return s
}

func (s *pgSilent) accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}
