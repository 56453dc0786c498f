package bench

import (
	"context"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// BenchmarkOrdering writes 200 keys x 50 rows from four concurrent writers
// while three relays drain them and one relay is SIGKILLed and restarted
// every 0.3-1 s; it reports ordering violations (judged per key by the
// first arrival of each message id; must be 0) and msg/s.
func BenchmarkOrdering(b *testing.B) {
	for range b.N {
		env := testenv.Services(b)
		dsn := testenv.NewSchema(b, true)
		pool := testenv.Pool(b, dsn)
		_, ch := testenv.AMQP(b, env.AMQPURL)
		queue := testenv.Queue(b, ch, true)

		const keys, perKey = 200, 50
		procs := startRelays(b, 3, relayEnv(dsn, env.AMQPURL, "RELAY_RECONNECT_MAX=500ms"))
		start := time.Now()
		stopKills := testenv.KillLoop(procs, 300*time.Millisecond, time.Second)
		testenv.WriteKeyed(b, pool, queue, keys, perKey, 4, 10, 15*time.Millisecond)
		testenv.WaitPublished(b, pool, 5*time.Minute)
		elapsed := time.Since(start)
		kills := stopKills()

		got := testenv.ConsumeDistinct(b, ch, queue, keys*perKey, 2*time.Minute)
		violations, judged := testenv.OrderViolations(b, pool, got)
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
		env := testenv.Services(b)
		dsn := testenv.NewSchema(b, true)
		pool := testenv.Pool(b, dsn)
		_, ch := testenv.AMQP(b, env.AMQPURL)
		queue := testenv.Queue(b, ch, true)
		ctx := context.Background()
		const n = 2000

		procs := startRelays(b, 1, relayEnv(dsn, env.AMQPURL))
		tx, err := pool.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		msgs := make([]outbox.Message, n)
		for i := range msgs {
			msgs[i] = outbox.Message{RoutingKey: queue, OrderingKey: "hot", Payload: payload}
		}
		if _, err := outbox.Enqueue(ctx, tx, msgs...); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			b.Fatal(err)
		}
		start := dbNow(b, pool)
		testenv.Eventually(b, 10*time.Minute, "the key's rows published", func() (bool, error) {
			return metricSum(procs, "outboxrelay_relay_published_total") >= n, nil
		})
		var last time.Time
		if err := pool.QueryRow(ctx, `SELECT max(published_at) FROM outbox`).Scan(&last); err != nil {
			b.Fatal(err)
		}
		rate := n / last.Sub(start).Seconds()
		purge(b, ch, queue)
		report("hot key  quorum  1 relay(s): %d rows of one ordering key drained at %.0f msg/s (one row per batch cycle)", n, rate)
		b.ReportMetric(rate, "msg/s")
		b.ReportMetric(0, "ns/op")
	}
}
