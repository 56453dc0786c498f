package bench

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// drainResult is what one drain measured.
type drainResult struct {
	rate                   float64 // msg/s, from the fill's commit to the last published_at
	relayCPU, pgCPU, mqCPU float64 // CPU µs per message
	walBytes               float64 // WAL bytes per message
	roundTrips             float64 // database round trips per message
	tableBytes, deadTuples int64   // after the drain
	elapsed                time.Duration
	peakRSS                float64            // MiB, the largest resident set of the relays
	pgParts                map[string]float64 // pgCPU by kind of process (pgCPUParts)
}

// relaySpec is what a drain runs: this checkout's relay, or a binary built
// from another commit (BENCH_BASELINE_BIN), with its settings.
type relaySpec struct {
	name    string // as reported
	bin     string // "" for this checkout's relay
	env     []string
	deletes bool // retention: none: rows are deleted as they are published
	// setup is SQL run on the bed's schema before the fill: for a
	// baseline, BENCH_BASELINE_SQL undoes a schema change (a migration)
	// the baseline's commit did not have.
	setup string
}

// drainSpecs are the relays every drain pass runs beside the raw limit:
// both retention modes, and with BENCH_BASELINE_BIN (a relay binary built
// from an earlier commit) the same two on that binary, interleaved in the
// same passes so that the machine's drift between runs cannot pass for a
// change.
func drainSpecs() []relaySpec {
	none := []string{"RELAY_RETENTION=none"}
	specs := []relaySpec{{name: "retention 168h"}, {name: "retention none", env: none, deletes: true}}
	if bin := os.Getenv("BENCH_BASELINE_BIN"); bin != "" {
		sql := os.Getenv("BENCH_BASELINE_SQL")
		specs = append(specs, relaySpec{name: "baseline 168h", bin: bin, setup: sql},
			relaySpec{name: "baseline none", bin: bin, env: none, deletes: true, setup: sql})
	}
	return specs
}

// drain fills n rows (over `keys` ordering keys, none if 0) in one
// transaction while `relays` relay processes wait, commits, and times the
// drain from the commit to the last row's published_at (both on the
// database clock). extraEnv configures the relays.
func drain(b *testing.B, d *bed, n, relays, keys int, extraEnv ...string) drainResult {
	return drainSpec(b, d, n, relays, keys, relaySpec{env: extraEnv})
}

// drainSpec is drain with the relays of spec. When they delete what they
// publish, the drain ends at the last delete, which a statement trigger
// notes on the database clock (one row per batch).
func drainSpec(b *testing.B, d *bed, n, relays, keys int, spec relaySpec) drainResult {
	ctx := context.Background()
	if spec.deletes {
		_, err := d.pool.Exec(ctx, `
CREATE TABLE bench_deleted (at timestamptz NOT NULL);
CREATE FUNCTION bench_note_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bench_deleted VALUES (clock_timestamp()); RETURN NULL; END $$;
CREATE TRIGGER bench_note_delete AFTER DELETE ON outbox FOR EACH STATEMENT EXECUTE FUNCTION bench_note_delete();`)
		if err != nil {
			b.Fatal(err)
		}
	}
	if spec.setup != "" {
		if _, err := d.pool.Exec(ctx, spec.setup); err != nil {
			b.Fatalf("%s: setup %q: %v", spec.name, spec.setup, err)
		}
	}
	env := relayEnv(d.dsn, d.amqpURL, spec.env...)
	procs := make([]*testenv.RelayProc, relays)
	for i := range procs {
		if spec.bin != "" {
			procs[i] = testenv.StartRelayProcBin(b, spec.bin, env...)
		} else {
			procs[i] = testenv.StartRelayProc(b, env...)
		}
	}
	for _, p := range procs {
		waitReady(b, p)
	}
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	fill(b, tx, d.queue, keys, n)

	pids := make([]int, len(procs))
	for i, p := range procs {
		pids[i] = p.Pid()
	}
	relayCPU := func() float64 {
		var s float64
		for _, pid := range pids {
			s += procCPU(pid)
		}
		return s
	}
	svc := services(b, d.pool)
	settle()
	rt0 := metricSum(procs, "outboxrelay_relay_database_round_trips_total")
	wal0 := walLSN(b, d.pool)
	parts0 := svc.pgCPUParts()
	cpu0, pg0, mq0 := relayCPU(), svc.pgCPUOf(parts0), svc.mqCPU()
	if err := tx.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	start := dbNow(b, d.pool)

	awaitDrained(b, d, n)
	parts1 := svc.pgCPUParts()
	cpu1, pg1, mq1 := relayCPU(), svc.pgCPUOf(parts1), svc.mqCPU()
	rt1 := metricSum(procs, "outboxrelay_relay_database_round_trips_total")
	wal1 := walLSN(b, d.pool)

	last := `SELECT max(published_at) FROM outbox`
	if spec.deletes {
		last = `SELECT max(at) FROM bench_deleted`
	}
	var end time.Time
	if err := d.pool.QueryRow(ctx, last).Scan(&end); err != nil {
		b.Fatal(err)
	}
	var rss float64
	for _, pid := range pids {
		rss = max(rss, peakRSS(pid))
	}
	for _, p := range procs {
		if err := p.Stop(); err != nil {
			b.Fatalf("relay stop: %v", err)
		}
	}
	elapsed := end.Sub(start)
	perMsg := 1e6 / float64(n) // seconds for n messages -> µs per message
	res := drainResult{
		rate:     float64(n) / elapsed.Seconds(),
		relayCPU: (cpu1 - cpu0) * perMsg, pgCPU: (pg1 - pg0) * perMsg, mqCPU: (mq1 - mq0) * perMsg,
		walBytes:   (wal1 - wal0) / float64(n),
		roundTrips: (rt1 - rt0) / float64(n),
		elapsed:    elapsed,
		peakRSS:    rss,
		pgParts:    cpuDelta(parts0, parts1, n),
	}
	res.tableBytes, res.deadTuples = tableSize(b, d.pool)
	return res
}

// awaitDrained waits until d's queue holds n messages and no row is
// pending. It asks the broker (a passive declare) and then the database,
// never the relays: a /metrics scrape costs a relay about 2 ms of CPU, and
// the twenty or so a drain's polling takes were billed to its cost per
// message (measured: about 0.2 us at 50,000 rows), though no production
// scrape comes that often.
func awaitDrained(b *testing.B, d *bed, n int) {
	ctx := context.Background()
	testenv.Eventually(b, 10*time.Minute, "every message in the queue", func() (bool, error) {
		q, err := d.ch.QueueDeclarePassive(d.queue, true, false, false, false, nil)
		return err == nil && q.Messages >= n, err
	})
	testenv.Eventually(b, time.Minute, "no row pending", func() (bool, error) {
		var pending bool
		err := d.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL)`).Scan(&pending)
		return err == nil && !pending, err
	})
}

// BenchmarkDrain drains BENCH_N rows with one and with three relays, into
// a quorum and a classic queue, each beside the raw broker limit measured
// just before it on the same queue.
func BenchmarkDrain(b *testing.B) {
	for _, kind := range queueKinds() {
		for _, relays := range []int{1, 3} {
			b.Run(fmt.Sprintf("%s/relays=%d", kind, relays), func(b *testing.B) {
				for range b.N {
					drainOnce(b, kind == "quorum", relays)
				}
			})
		}
	}
}

func drainOnce(b *testing.B, quorum bool, relays int) {
	n := rows()
	kind := map[bool]string{true: "quorum", false: "classic"}[quorum]

	// This machine's speed drifts between runs, by a third at times; each
	// pass measures the raw limit and then every spec's drain, and the
	// median pass is the figure. The specs take turns going first.
	repeat := envInt("BENCH_REPEAT", 3)
	type pass struct {
		res   drainResult
		raw   float64
		ratio float64
	}
	specs := drainSpecs()
	passes := make([][]pass, len(specs))
	for i := range repeat {
		d := newBed(b, quorum)
		raw, rawMQ, rawClient := rawLimit(b, d.amqpURL, d.queue, n)
		purge(b, d.ch, d.queue)
		report("drain    %-7s pass %d/%d: raw broker limit %6.0f msg/s (CPU µs per msg: publisher %.1f, rabbitmq %.1f)",
			kind, i+1, repeat, raw, rawClient*1e6/float64(n), rawMQ*1e6/float64(n))
		for j := range specs {
			k := (i + j) % len(specs)
			spec := specs[k]
			if j > 0 {
				d = newBed(b, quorum)
			}
			res := drainSpec(b, d, n, relays, 0, spec)
			purge(b, d.ch, d.queue)
			report("drain    %-7s %d relay(s), %-14s pass %d/%d: %d rows in %.2fs = %6.0f msg/s, ratio %.2f | CPU µs per msg: relay %.1f, postgres %.1f, rabbitmq %.1f | WAL %.0f bytes | %.4f db round trips | relay peak RSS %.0f MiB | postgres by process: %s",
				kind, relays, spec.name, i+1, repeat, n, res.elapsed.Seconds(), res.rate, res.rate/raw,
				res.relayCPU, res.pgCPU, res.mqCPU, res.walBytes, res.roundTrips, res.peakRSS, fmtParts(res.pgParts))
			passes[k] = append(passes[k], pass{res, raw, res.rate / raw})
		}
	}
	for k, spec := range specs {
		ps := passes[k]
		slices.SortFunc(ps, func(x, y pass) int { return cmp.Compare(x.ratio, y.ratio) })
		ratios := make([]float64, len(ps))
		for i, p := range ps {
			ratios[i] = p.ratio
		}
		med := ps[len(ps)/2]
		relayCPU := median(ps, func(p pass) float64 { return p.res.relayCPU })
		pgCPU := median(ps, func(p pass) float64 { return p.res.pgCPU })
		mqCPU := median(ps, func(p pass) float64 { return p.res.mqCPU })
		wal := median(ps, func(p pass) float64 { return p.res.walBytes })
		trips := median(ps, func(p pass) float64 { return p.res.roundTrips })
		rss := median(ps, func(p pass) float64 { return p.res.peakRSS })
		report("COST     %-7s %d relay(s), %-14s | CPU µs per msg (median of %d passes): relay %4.1f, postgres %4.1f, rabbitmq %4.1f | WAL %4.0f bytes/msg | %.4f db round trips/msg | peak RSS %.0f MiB | median pass %6.0f msg/s, raw %6.0f, ratio %.2f (passes: %s)",
			kind, relays, spec.name, len(ps), relayCPU, pgCPU, mqCPU, wal, trips, rss, med.res.rate, med.raw, med.ratio, fmtList(ratios))
		if k == 0 {
			b.ReportMetric(med.res.rate, "msg/s")
			b.ReportMetric(med.raw, "raw_msg/s")
			b.ReportMetric(med.ratio, "ratio")
			b.ReportMetric(relayCPU, "relay_cpu_µs/msg")
			b.ReportMetric(pgCPU, "pg_cpu_µs/msg")
			b.ReportMetric(wal, "wal_bytes/msg")
			b.ReportMetric(trips, "round_trips/msg")
			b.ReportMetric(0, "ns/op")
		}
	}
}

// median is the median of f over xs (the upper one of an even count).
func median[T any](xs []T, f func(T) float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	vs := make([]float64, len(xs))
	for i, x := range xs {
		vs[i] = f(x)
	}
	slices.Sort(vs)
	return vs[len(vs)/2]
}

func fmtList(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(parts, ", ")
}

// BenchmarkDrainHoldingXmin drains twice while another session holds a
// snapshot open (as a long report or a stuck transaction would): vacuum
// can remove nothing, so the second drain's claims run past the first
// drain's dead tuples. The claim must stay fast: compare the two rates.
func BenchmarkDrainHoldingXmin(b *testing.B) {
	for range b.N {
		n := rows()
		d := newBed(b, true)
		ctx := context.Background()

		holder, err := d.pool.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		htx, err := holder.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := htx.Exec(ctx, `SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`); err != nil {
			b.Fatal(err)
		}
		var xmin string
		if err := htx.QueryRow(ctx, `SELECT txid_current()::text`).Scan(&xmin); err != nil {
			b.Fatal(err)
		}

		raw, _, _ := rawLimit(b, d.amqpURL, d.queue, n)
		purge(b, d.ch, d.queue)
		first := drain(b, d, n, 1, 0)
		purge(b, d.ch, d.queue)
		second := drain(b, d, n, 1, 0)
		purge(b, d.ch, d.queue)
		_ = htx.Rollback(ctx)
		holder.Release()

		report("xmin     quorum  1 relay(s), snapshot held by txid %s: first drain %6.0f msg/s (ratio %.2f), second drain %6.0f msg/s (ratio %.2f) | raw %6.0f msg/s",
			xmin, first.rate, first.rate/raw, second.rate, second.rate/raw, raw)
		report("         after both: outbox %.1f MiB, %d dead tuples (vacuum held back)",
			float64(second.tableBytes)/(1<<20), second.deadTuples)
		b.ReportMetric(second.rate, "msg/s")
		b.ReportMetric(second.rate/raw, "ratio")
		b.ReportMetric(float64(second.deadTuples), "dead_tuples")
		b.ReportMetric(0, "ns/op")
	}
}
