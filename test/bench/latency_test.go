package bench

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/outbox"
	"github.com/outboxrelay/outboxrelay/relay"
)

// BenchmarkLatency measures commit-to-confirm latency with the relay's
// default settings: at a steady 1,000 msg/s (transactions of 10 rows every
// 10 ms) and for single rows inserted into an idle system. Each row is
// timed from its writer's commit to the relay's commit of its confirmed
// publish, so the figure includes the wake-up, the claim, the broker's
// confirm and the mark.
func BenchmarkLatency(b *testing.B) {
	for _, kind := range queueKinds() {
		b.Run(kind, func(b *testing.B) {
			for range b.N {
				tb := newBed(b, kind == "quorum")
				pool, ch, queue := tb.pool, tb.ch, tb.queue

				lat := newLatencies()
				stop := runRelay(b, pool, tb.amqpURL, lat.onBatch)
				steady := lat.steady(b, pool, queue, 1000, 10*time.Second)
				purge(b, ch, queue)
				idle := lat.idle(b, pool, queue, 100, 50*time.Millisecond)
				stop()
				purge(b, ch, queue)

				report("latency  %-7s steady 1,000 msg/s (%d rows): p50 %.1f ms, p99 %.1f ms | idle single rows (%d): p50 %.1f ms, p99 %.1f ms, max %.1f ms",
					kind, len(steady), pct(steady, 50), pct(steady, 99), len(idle), pct(idle, 50), pct(idle, 99), pct(idle, 100))
				b.ReportMetric(pct(steady, 50), "p50_ms")
				b.ReportMetric(pct(steady, 99), "p99_ms")
				b.ReportMetric(pct(idle, 99), "idle_p99_ms")
				b.ReportMetric(0, "ns/op")
			}
		})
	}
}

// pct is the p-th percentile of sorted samples (p = 100: the maximum).
func pct(sorted []float64, p int) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}

// latencies pairs writers' commit times with the relay's commits.
type latencies struct {
	mu        sync.Mutex
	committed map[string]time.Time
	samples   []float64
	arrived   chan struct{}
}

func newLatencies() *latencies {
	return &latencies{committed: map[string]time.Time{}, arrived: make(chan struct{}, 1)}
}

func (l *latencies) onBatch(r relay.BatchResult) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range r.Published {
		if c, ok := l.committed[id]; ok {
			delete(l.committed, id)
			l.samples = append(l.samples, float64(r.CommittedAt.Sub(c).Microseconds())/1000)
		}
	}
	select {
	case l.arrived <- struct{}{}:
	default:
	}
}

// commit writes msgs in one transaction and registers their commit time.
// The lock is held across the commit so that a fast relay cannot report a
// row before its commit time is known.
func (l *latencies) commit(b *testing.B, pool *pgxpool.Pool, msgs []outbox.Message) {
	ctx := context.Background()
	l.mu.Lock()
	defer l.mu.Unlock()
	tx, err := pool.Begin(ctx)
	if err != nil {
		b.Fatal(err)
	}
	ids, err := outbox.Enqueue(ctx, tx, msgs...)
	if err != nil {
		b.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	for _, id := range ids {
		l.committed[id] = now
	}
}

// take waits until want samples are in, returns them sorted and resets.
func (l *latencies) take(b *testing.B, want int) []float64 {
	deadline := time.After(time.Minute)
	for {
		l.mu.Lock()
		if len(l.samples) >= want {
			s := l.samples
			l.samples = nil
			l.mu.Unlock()
			slices.Sort(s)
			return s
		}
		l.mu.Unlock()
		select {
		case <-l.arrived:
		case <-deadline:
			b.Fatalf("only %d of %d rows published within a minute", len(l.samples), want)
		}
	}
}

// steady writes rate msg/s for d, in transactions of 10 rows.
func (l *latencies) steady(b *testing.B, pool *pgxpool.Pool, queue string, rate int, d time.Duration) []float64 {
	const perTx = 10
	total := rate * int(d/time.Second)
	msgs := make([]outbox.Message, perTx)
	for i := range msgs {
		msgs[i] = outbox.Message{RoutingKey: queue, Payload: payload}
	}
	tick := time.NewTicker(time.Second * perTx / time.Duration(rate))
	defer tick.Stop()
	for sent := 0; sent < total; sent += perTx {
		<-tick.C
		l.commit(b, pool, msgs)
	}
	return l.take(b, total)
}

// idle inserts count single rows, each once the previous one is published
// and the system has been idle for gap.
func (l *latencies) idle(b *testing.B, pool *pgxpool.Pool, queue string, count int, gap time.Duration) []float64 {
	msg := []outbox.Message{{RoutingKey: queue, Payload: payload}}
	for i := range count {
		time.Sleep(gap) // the load shape: an idle system between rows
		l.commit(b, pool, msg)
		for {
			l.mu.Lock()
			n := len(l.samples)
			l.mu.Unlock()
			if n > i {
				break
			}
			select {
			case <-l.arrived:
			case <-time.After(time.Minute):
				b.Fatalf("row %d not published within a minute", i)
			}
		}
	}
	return l.take(b, count)
}

// runRelay runs an embedded relay with default settings until stop.
func runRelay(b *testing.B, pool *pgxpool.Pool, amqpURL string, onBatch func(relay.BatchResult)) (stop func()) {
	r, err := relay.New(pool, relay.Config{
		AMQPURLs:  []string{amqpURL},
		Workers:   envInt("BENCH_WORKERS", 0),
		BatchSize: envInt("BENCH_BATCH", 0),
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnBatch:   onBatch,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		_ = r.Run(ctx)
	}()
	return func() {
		cancel()
		<-ended
	}
}
