package bench

import (
	"fmt"
	"slices"
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

// BenchmarkKeyedDrain drains a backlog where every row carries an
// ordering key (the common case: the key is the aggregate id), built while
// the relay was stopped, with 1, 20, 200 and 2,000 keys, beside an unkeyed
// drain of the same size and the raw broker limit, all in one pass on the
// same kind of queue, with one relay. The unkeyed drain runs before and
// after the keyed ones and its mean is the pass's reference (the machine's
// speed drifts). A last drain of one key runs with strict_ordering (one
// unconfirmed row per key), on fewer rows: it is bounded by one confirm
// round trip per row. BENCH_REPEAT passes (default 3); the median of each
// figure over the passes is reported.
//
// BENCH_KEYED_N sets the backlog (default 50,000), BENCH_STRICT_N the
// strict drain's (default 5,000).
func BenchmarkKeyedDrain(b *testing.B) {
	for _, kind := range queueKinds() {
		b.Run(kind, func(b *testing.B) {
			for range b.N {
				keyedDrain(b, kind == "quorum")
			}
		})
	}
}

var keyCounts = []int{1, 20, 200, 2000}

// keyedPass is one pass of BenchmarkKeyedDrain.
type keyedPass struct {
	raw, unkeyed, strict float64 // msg/s
	keyed                map[int]float64
}

func keyedDrain(b *testing.B, quorum bool) {
	kind := map[bool]string{true: "quorum", false: "classic"}[quorum]
	n := envInt("BENCH_KEYED_N", 50_000)
	strictN := envInt("BENCH_STRICT_N", 5_000)
	cpu := func(r drainResult) string {
		return fmt.Sprintf("per msg: CPU µs relay %.1f, postgres %.1f, rabbitmq %.1f | WAL %.0f bytes", r.relayCPU, r.pgCPU, r.mqCPU, r.walBytes)
	}
	run := func(keys, rows int, env ...string) drainResult {
		d := newBed(b, quorum)
		res := drain(b, d, rows, 1, keys, env...)
		purge(b, d.ch, d.queue)
		return res
	}
	repeat := envInt("BENCH_REPEAT", 3)
	var passes []keyedPass
	for i := range repeat {
		d := newBed(b, quorum)
		p := keyedPass{keyed: map[int]float64{}}
		p.raw, _, _ = rawLimit(b, d.amqpURL, d.queue, n)
		purge(b, d.ch, d.queue)
		before := run(0, n)
		for _, k := range keyCounts {
			r := run(k, n)
			p.keyed[k] = r.rate
			report("keyed    %-7s pass %d/%d %5d key(s): %6.0f msg/s | %s", kind, i+1, repeat, k, r.rate, cpu(r))
		}
		p.strict = run(1, strictN, "RELAY_STRICT_ORDERING=true").rate
		after := run(0, n)
		p.unkeyed = (before.rate + after.rate) / 2
		report("keyed    %-7s pass %d/%d: raw %6.0f msg/s | unkeyed %6.0f msg/s (before %.0f, after %.0f) | %s | strict, 1 key: %.0f msg/s",
			kind, i+1, repeat, p.raw, p.unkeyed, before.rate, after.rate, cpu(before), p.strict)
		passes = append(passes, p)
	}
	med := func(f func(keyedPass) float64) float64 {
		xs := make([]float64, len(passes))
		for i, p := range passes {
			xs[i] = f(p)
		}
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	raw := med(func(p keyedPass) float64 { return p.raw })
	unkeyed := med(func(p keyedPass) float64 { return p.unkeyed })
	report("keyed    %-7s 1 relay, %d-row backlog, median of %d passes: raw %6.0f msg/s | unkeyed %6.0f msg/s, ratio %.2f",
		kind, n, repeat, raw, unkeyed, med(func(p keyedPass) float64 { return p.unkeyed / p.raw }))
	for _, k := range keyCounts {
		ofUnkeyed := med(func(p keyedPass) float64 { return p.keyed[k] / p.unkeyed })
		report("keyed    %-7s %5d key(s): %6.0f msg/s | %.2f of unkeyed | ratio %.2f", kind, k,
			med(func(p keyedPass) float64 { return p.keyed[k] }), ofUnkeyed, med(func(p keyedPass) float64 { return p.keyed[k] / p.raw }))
		b.ReportMetric(ofUnkeyed, fmt.Sprintf("keys=%d/unkeyed", k))
	}
	strict := med(func(p keyedPass) float64 { return p.strict })
	report("keyed    %-7s     1 key, strict_ordering, %d rows: %6.0f msg/s | ratio %.2f", kind, strictN, strict,
		med(func(p keyedPass) float64 { return p.strict / p.raw }))
	b.ReportMetric(med(func(p keyedPass) float64 { return p.keyed[1] / p.raw }), "keys=1_ratio")
	b.ReportMetric(strict, "strict_msg/s")
	b.ReportMetric(0, "ns/op")
}
