//go:build partition

package partition

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// The scenarios run one after another (no t.Parallel): they share the
// cluster. Those under ignore come first; pause_minority restarts the nodes.

// isolate cuts node n off from its peers for d, then heals.
func isolate(n int, d time.Duration) func(ctx context.Context, h *harness) string {
	return func(ctx context.Context, h *harness) string {
		testenv.ServicesCmd(h.t, "netns-isolate", strconv.Itoa(n))
		hold(ctx, d)
		testenv.ServicesCmd(h.t, "netns-heal")
		return fmt.Sprintf("node %d isolated for %s", n, d)
	}
}

// The relays' node stays up and keeps their connections, but cannot reach
// the quorum queue's leader or any other replica: nothing it accepts can be
// confirmed while two healthy nodes are a URL away.
func TestRelaysNodeIsolatedIgnore(t *testing.T) {
	run(t, "relays' node isolated 60s", scenario{handling: "ignore", relays: 1, leader: 2, consume: 2,
		fault: isolate(1, 60*time.Second)})
}

// The leader's node is cut off: the relays' node stays in the majority,
// which elects a new leader.
func TestLeaderNodeIsolated(t *testing.T) {
	run(t, "queue leader's node isolated 20s", scenario{handling: "ignore", relays: 1, leader: 2, consume: 3,
		fault: isolate(2, 20*time.Second)})
}

// A bridge: nodes 1 (the relays') and 2 (the leader) cannot see each other;
// node 3 sees both.
func TestBridge(t *testing.T) {
	run(t, "bridge 1|2, 3 sees both, 20s", scenario{handling: "ignore", relays: 1, leader: 2, consume: 3,
		fault: func(ctx context.Context, h *harness) string {
			testenv.ServicesCmd(h.t, "netns-bridge", "1", "2")
			hold(ctx, 20*time.Second)
			testenv.ServicesCmd(h.t, "netns-heal")
			return "nodes 1 and 2 cut from each other for 20s"
		}})
}

// flapping cuts a random node off for 10-15 s, heals for 10-15 s, and so on
// for d. The seed is PARTITION_SEED when set, else random; it is printed.
func flapping(t *testing.T, d time.Duration) func(ctx context.Context, h *harness) string {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("PARTITION_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("PARTITION_SEED: %v", err)
		}
	}
	t.Logf("flapping seed %d (rerun with PARTITION_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	return func(ctx context.Context, h *harness) string {
		end := time.Now().Add(d)
		var cuts []string
		for time.Now().Before(end) {
			n := 1 + rng.IntN(3)
			testenv.ServicesCmd(h.t, "netns-isolate", strconv.Itoa(n))
			cuts = append(cuts, strconv.Itoa(n))
			hold(ctx, 10*time.Second+time.Duration(rng.Int64N(int64(5*time.Second))))
			testenv.ServicesCmd(h.t, "netns-heal")
			hold(ctx, 10*time.Second+time.Duration(rng.Int64N(int64(5*time.Second))))
		}
		return fmt.Sprintf("seed %d: nodes cut in turn %s over %s", seed, strings.Join(cuts, ","), d)
	}
}

func TestFlapping(t *testing.T) {
	run(t, "flapping 2m", scenario{handling: "ignore", relays: 1, leader: 2, consume: 3,
		fault: flapping(t, 2*time.Minute)})
}

// In strict mode a key has at most one unconfirmed row: no partition can
// let a later row of a key arrive first.
func TestFlappingStrictOrdering(t *testing.T) {
	run(t, "flapping 45s, strict ordering", scenario{handling: "ignore", relays: 1, leader: 2, consume: 3, strict: true,
		fault: flapping(t, 45*time.Second)})
}

// slowLink is an in-process toxiproxy in front of a node's AMQP port.
type slowLink struct {
	proxy *toxiproxy.Proxy
}

func newSlowLink(t *testing.T, nodeURL string) (*slowLink, string) {
	t.Helper()
	u, err := url.Parse(nodeURL)
	if err != nil {
		t.Fatal(err)
	}
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(server, "relays-node", "127.0.0.1:0", u.Host)
	if err := p.Start(); err != nil {
		t.Fatalf("toxiproxy: %v", err)
	}
	t.Cleanup(p.Stop)
	u.Host = p.Listen
	return &slowLink{proxy: p}, u.String()
}

// toxics: 200 ms (± 50 ms) each way, and the stream cut into small slices
// each held 2 ms, the way retransmissions after loss hold back what follows
// on a TCP connection (a proxy above TCP cannot drop a segment without
// corrupting the stream; the kernel here has no netem).
var toxics = []string{
	`{"name":"latency_down","type":"latency","stream":"downstream","attributes":{"latency":200,"jitter":50}}`,
	`{"name":"latency_up","type":"latency","stream":"upstream","attributes":{"latency":200,"jitter":50}}`,
	`{"name":"loss_down","type":"slicer","stream":"downstream","attributes":{"average_size":256,"size_variation":128,"delay":2000}}`,
	`{"name":"loss_up","type":"slicer","stream":"upstream","attributes":{"average_size":256,"size_variation":128,"delay":2000}}`,
}

func (l *slowLink) degrade(t *testing.T, on bool) {
	t.Helper()
	for _, js := range toxics {
		if on {
			if _, err := l.proxy.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
				t.Fatalf("toxic %s: %v", js, err)
			}
		}
	}
	if !on {
		l.proxy.Toxics.ResetToxics(context.Background())
	}
}

func TestSlowLossyLink(t *testing.T) {
	var link *slowLink
	run(t, "slow+lossy link to relays' node", scenario{handling: "ignore", relays: 1, leader: 2, consume: 2,
		relayURL: func(t *testing.T, nodeURL string) string {
			l, u := newSlowLink(t, nodeURL)
			link = l
			return u
		},
		fault: func(ctx context.Context, h *harness) string {
			link.degrade(h.t, true)
			hold(ctx, 20*time.Second)
			link.degrade(h.t, false)
			return "200ms±50ms latency each way and 2ms-per-slice delays for 20s"
		}})
}

// Under pause_minority the isolated node pauses and closes its clients'
// connections: the relays go to the next URL.
func TestRelaysNodeIsolatedPauseMinority(t *testing.T) {
	run(t, "relays' node isolated 60s", scenario{handling: "pause_minority", relays: 1, leader: 2, consume: 2,
		fault: isolate(1, 60*time.Second)})
}
