package bench

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/outbox"
)

// BenchmarkSoak runs for BENCH_SOAK (skipped when unset; `make bench-long`
// sets 20m): a writer commits BENCH_SOAK_RATE msg/s (default 2,000, in
// transactions of 20 rows), one relay publishes them with retention at 2
// minutes (every 10 s), and a consumer drains the queue. Every minute it
// prints the rows published in that minute, the outbox table's size and
// dead tuples, and the relay's RSS; at the end, the table size at start and
// end.
func BenchmarkSoak(b *testing.B) {
	d, err := time.ParseDuration(os.Getenv("BENCH_SOAK"))
	if err != nil || d <= 0 {
		b.Skip("BENCH_SOAK not set (make bench-long sets 20m)")
	}
	rate := envInt("BENCH_SOAK_RATE", 2000)
	for range b.N {
		tb := newBed(b, true)
		pool, ch, queue := tb.pool, tb.ch, tb.queue
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()

		// The consumer keeps the queue short, as a real one would.
		deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			for range deliveries {
			}
		}()

		procs := startRelays(b, 1, relayEnv(tb.dsn, tb.amqpURL,
			"RELAY_RETENTION=2m", "RELAY_RETENTION_INTERVAL=10s"))
		relayPid := procs[0].Pid()
		startBytes, _ := tableSize(b, pool)
		cpu0 := procCPU(relayPid)

		writerDone := make(chan error, 1)
		go func() {
			const perTx = 20
			msgs := make([]outbox.Message, perTx)
			for i := range msgs {
				msgs[i] = outbox.Message{RoutingKey: queue, Payload: payload}
			}
			tick := time.NewTicker(time.Second * perTx / time.Duration(rate))
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					writerDone <- nil
					return
				case <-tick.C:
				}
				if _, err := outbox.Enqueue(ctx, pool, msgs...); err != nil && ctx.Err() == nil {
					writerDone <- err
					return
				}
			}
		}()

		report("soak     quorum  1 relay(s), %d msg/s for %s, retention 2m: outbox at start %.2f MiB", rate, d, float64(startBytes)/(1<<20))
		minute := time.NewTicker(time.Minute)
		end := time.After(d)
		published := metricSum(procs, "outboxrelay_relay_published_total")
		var minRate, sumRate float64
		minutes := 0
	loop:
		for {
			select {
			case err := <-writerDone:
				b.Fatalf("writer: %v", err)
			case <-end:
				break loop
			case <-minute.C:
			}
			now := metricSum(procs, "outboxrelay_relay_published_total")
			perMin := now - published
			published = now
			bytes, dead := tableSize(b, pool)
			minutes++
			if minutes == 1 || perMin < minRate {
				minRate = perMin
			}
			sumRate += perMin
			report("soak     minute %2d: published %6.0f (%4.0f msg/s) | outbox %6.1f MiB, %7d dead tuples | relay RSS %5.1f MiB",
				minutes, perMin, perMin/60, float64(bytes)/(1<<20), dead, rssMiB(relayPid))
		}
		minute.Stop()
		cancel()
		endBytes, _ := tableSize(b, pool)
		cpu := procCPU(relayPid) - cpu0
		var pending int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&pending); err != nil {
			b.Fatal(err)
		}
		report("soak     end: outbox %.2f MiB at start, %.1f MiB at end | %d minutes, mean %.0f msg/s, slowest minute %.0f msg/s | relay RSS %.1f MiB, %.2f CPU s per 10k msgs | %d rows pending",
			float64(startBytes)/(1<<20), float64(endBytes)/(1<<20), minutes, sumRate/float64(max(minutes, 1))/60, minRate/60,
			rssMiB(relayPid), cpu*10_000/max(published, 1), pending)
		b.ReportMetric(float64(endBytes)/(1<<20), "end_table_MiB")
		b.ReportMetric(0, "ns/op")
	}
}
