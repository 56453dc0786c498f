// Package bench measures the relay against the raw broker limit, in one run
// on the same services: a plain amqp091-go publisher with pipelined
// confirms sets the limit, and the relay's throughput is read as a ratio
// to it. Run with `make bench` (BENCH_N rows, default 50,000).
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
	"github.com/outboxrelay/outboxrelay/relay"
)

// payload is a typical small event.
var payload = []byte(`{"order_id":123456,"customer_id":987654,"total_cents":1999,"currency":"EUR","status":"created"}`)

func rows() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_N")); err == nil && n > 0 {
		return n
	}
	return 50_000
}

func BenchmarkDrain(b *testing.B) {
	for _, kind := range []string{"quorum", "classic"} {
		b.Run(kind, func(b *testing.B) {
			for range b.N {
				drain(b, kind == "quorum")
			}
		})
	}
}

func drain(b *testing.B, quorum bool) {
	env := testenv.Services(b)
	n := rows()
	dsn := testenv.NewSchema(b, true)
	pool := testenv.Pool(b, dsn)
	_, ch := testenv.AMQP(b, env.AMQPURL)
	queue := testenv.Queue(b, ch, quorum)

	raw := rawLimit(b, env.AMQPURL, queue, n)
	purge(b, ch, queue)

	fill(b, pool, queue, n)
	var (
		mu        sync.Mutex
		published int
		done      = make(chan struct{})
	)
	start := time.Now()
	stop := runRelay(b, pool, env.AMQPURL, func(r relay.BatchResult) {
		mu.Lock()
		defer mu.Unlock()
		published += len(r.Published)
		if published == n {
			close(done)
		}
	})
	select {
	case <-done:
	case <-time.After(10 * time.Minute):
		b.Fatalf("drain did not finish: %d of %d published", published, n)
	}
	elapsed := time.Since(start)
	stop()
	rate := float64(n) / elapsed.Seconds()
	purge(b, ch, queue)

	p50, p99 := steadyLatency(b, pool, env.AMQPURL, queue, 1000, 5*time.Second)
	purge(b, ch, queue)

	b.ReportMetric(rate, "msg/s")
	b.ReportMetric(raw, "raw_msg/s")
	b.ReportMetric(rate/raw, "ratio")
	b.ReportMetric(p50, "p50_ms")
	b.ReportMetric(p99, "p99_ms")
	b.ReportMetric(0, "ns/op")
	kind := "classic"
	if quorum {
		kind = "quorum"
	}
	fmt.Printf("\n%-8s drain of %d rows: relay %.0f msg/s, raw broker limit %.0f msg/s, ratio %.2f; "+
		"commit-to-confirm at 1,000 msg/s: p50 %.1f ms, p99 %.1f ms\n", kind, n, rate, raw, rate/raw, p50, p99)
}

// rawLimit publishes n persistent messages to queue with a plain amqp091-go
// publisher, confirms pipelined (up to 1,000 in flight), and returns msg/s.
func rawLimit(b *testing.B, amqpURL, queue string, n int) float64 {
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	const window = 1000
	inflight := make([]*amqp.DeferredConfirmation, 0, n)
	start := time.Now()
	next := 0
	for i := range n {
		dc, err := ch.PublishWithDeferredConfirm("", queue, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, ContentType: "application/json",
			MessageId: strconv.Itoa(i), Timestamp: time.Now(), Body: payload,
		})
		if err != nil {
			b.Fatal(err)
		}
		inflight = append(inflight, dc)
		for len(inflight)-next >= window {
			if !inflight[next].Wait() {
				b.Fatal("raw publisher: nack")
			}
			next++
		}
	}
	for ; next < len(inflight); next++ {
		if !inflight[next].Wait() {
			b.Fatal("raw publisher: nack")
		}
	}
	return float64(n) / time.Since(start).Seconds()
}

func purge(b *testing.B, ch *amqp.Channel, queue string) {
	if _, err := ch.QueuePurge(queue, false); err != nil {
		b.Fatal(err)
	}
}

func fill(b *testing.B, pool *pgxpool.Pool, queue string, n int) {
	ctx := context.Background()
	msgs := make([]outbox.Message, 0, 1000)
	for left := n; left > 0; left -= len(msgs) {
		msgs = msgs[:0]
		for range min(1000, left) {
			msgs = append(msgs, outbox.Message{RoutingKey: queue, Payload: payload})
		}
		if _, err := outbox.Enqueue(ctx, pool, msgs...); err != nil {
			b.Fatal(err)
		}
	}
}

// envInt reads an optional integer setting (BENCH_WORKERS, BENCH_BATCH);
// zero means the relay's default.
func envInt(name string) int {
	n, _ := strconv.Atoi(os.Getenv(name))
	return n
}

func runRelay(b *testing.B, pool *pgxpool.Pool, amqpURL string, onBatch func(relay.BatchResult)) (stop func()) {
	r, err := relay.New(pool, relay.Config{
		AMQPURLs:  []string{amqpURL},
		Workers:   envInt("BENCH_WORKERS"),
		BatchSize: envInt("BENCH_BATCH"),
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

// steadyLatency writes rate msg/s (transactions of 10 rows every 10 ms)
// for d while a relay runs, and returns the p50 and p99 time in ms from a
// writer's commit to the relay's commit of the confirmed row.
func steadyLatency(b *testing.B, pool *pgxpool.Pool, amqpURL, queue string, rate int, d time.Duration) (p50, p99 float64) {
	ctx := context.Background()
	var (
		mu        sync.Mutex
		committed = map[string]time.Time{}
		lat       []float64
		total     = rate * int(d/time.Second)
		done      = make(chan struct{})
	)
	stop := runRelay(b, pool, amqpURL, func(r relay.BatchResult) {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range r.Published {
			if c, ok := committed[id]; ok {
				lat = append(lat, float64(r.CommittedAt.Sub(c).Microseconds())/1000)
			}
		}
		if len(lat) == total {
			close(done)
		}
	})
	defer stop()
	const perTx = 10
	tick := time.NewTicker(time.Second * perTx / time.Duration(rate))
	defer tick.Stop()
	msgs := make([]outbox.Message, perTx)
	for i := range msgs {
		msgs[i] = outbox.Message{RoutingKey: queue, Payload: payload}
	}
	for sent := 0; sent < total; sent += perTx {
		<-tick.C
		// Register commit times under the lock so a fast relay cannot see
		// the rows before their commit time is known.
		mu.Lock()
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
			committed[id] = now
		}
		mu.Unlock()
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		b.Fatal("steady phase did not finish")
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100]
}
