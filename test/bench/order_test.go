package bench

import (
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// BenchmarkOrdering writes 200 keys x 50 rows from four concurrent writers
// while three relays drain them and one relay is SIGKILLed and restarted
// every 0.3-1 s; it reports ordering violations (judged per key by the
// first arrival of each message id; must be 0) and msg/s.
func BenchmarkOrdering(b *testing.B) {
	for range b.N {
		d := newBed(b, true)
		const keys, perKey = 200, 50
		procs := startRelays(b, 3, relayEnv(d.dsn, d.amqpURL, "RELAY_RECONNECT_MAX=500ms"))
		start := time.Now()
		stopKills := testenv.KillLoop(procs, 300*time.Millisecond, time.Second)
		testenv.WriteKeyed(b, d.pool, d.queue, keys, perKey, 4, 10, 15*time.Millisecond)
		testenv.WaitPublished(b, d.pool, 5*time.Minute)
		elapsed := time.Since(start)
		kills := stopKills()

		got := testenv.ConsumeDistinct(b, d.ch, d.queue, keys*perKey, 2*time.Minute)
		violations, judged := testenv.OrderViolations(b, d.pool, got)
		report("ordering quorum  3 relay(s), %d kills: %d keys x %d rows from 4 writers, %.0f msg/s (write and drain) | violations %d",
			kills, judged, perKey, float64(keys*perKey)/elapsed.Seconds(), violations)
		if violations != 0 {
			b.Errorf("%d ordering violations", violations)
		}
		b.ReportMetric(float64(violations), "violations")
		b.ReportMetric(0, "ns/op")
	}
}

// BenchmarkHotKey drains a backlog of one ordering key (2,000 rows) with
// one relay: a key advances one row per batch cycle, so this is the
// per-key rate, far below the relay's rate across many keys.
func BenchmarkHotKey(b *testing.B) {
	for range b.N {
		const n = 2000
		d := newBed(b, true)
		res := drain(b, d, n, 1, "hot")
		purge(b, d.ch, d.queue)
		report("hot key  quorum  1 relay(s): %d rows of one ordering key drained at %.0f msg/s (one row per batch cycle)", n, res.rate)
		b.ReportMetric(res.rate, "msg/s")
		b.ReportMetric(0, "ns/op")
	}
}
