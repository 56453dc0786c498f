//go:build partition

package partition

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// publishRate is how many messages per second arrive at the inbox
// consumer's queue, before, during and after the partition.
const publishRate = 50

// inboxIsolation is how long the consumer's node is cut off: twice
// maxStall, so a consumer that stays on the node fails the test.
const inboxIsolation = 30 * time.Second

// The inbox consumer's node (node 1, first in its URL list) is cut off from
// the other two for inboxIsolation while messages keep arriving through node 2, the
// queue's leader. On node 1 deliveries just stop; the consumer must leave it
// for a node of the majority and apply every message exactly once.
func TestInboxConsumersNodeIsolatedIgnore(t *testing.T) {
	urls := netnsUp(t, "ignore")
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE applied (message_id text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())`); err != nil {
		t.Fatal(err)
	}
	queue := declareQuorumQueue(t, urls[1], order(urls, 2))
	if got := strings.TrimSpace(testenv.ServicesCmd(t, "netns-leader", queue)); got != "2" {
		t.Fatalf("queue %s is led by node %s, not by node 2 through which it was declared", queue, got)
	}
	// The consumer declares its dead-letter and retry queues itself.
	retryDelays := []time.Duration{time.Second}
	t.Cleanup(func() { deleteQueues(urls[1], queue+".dead", queue+".retry.1s") })

	pub := startPublisher(t, urls[1], queue)
	logs := &testenv.LogBuffer{}
	var duplicates, ackErrs atomic.Int64
	reg := prometheus.NewRegistry()
	cfg := inbox.Config{
		Queue:       queue,
		Name:        "partition-consumer",
		DB:          pool,
		AMQPURLs:    order(urls, 1),
		Concurrency: 4,
		RetryDelays: retryDelays,
		Handler: func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
			_, err := tx.Exec(ctx, `INSERT INTO applied (message_id) VALUES ($1)`, m.ID)
			return err
		},
		Logger:     slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Registerer: reg,
		OnEvent: func(e inbox.Event) {
			if e.Kind == inbox.EventDuplicate {
				duplicates.Add(1)
			}
			if e.AckErr != nil {
				ackErrs.Add(1)
			}
		},
	}
	stopConsumer := startConsumer(t, cfg)
	testenv.Eventually(t, time.Minute, "the consumer to apply 100 messages before the cut", func() (bool, error) {
		n, err := count(ctx, pool, `SELECT count(*) FROM applied`)
		return n >= 100, err
	})

	cutAt := time.Now()
	testenv.ServicesCmd(t, "netns-isolate", "1")
	hold(ctx, inboxIsolation)
	testenv.ServicesCmd(t, "netns-heal")
	healedAt := time.Now()
	hold(ctx, 5*time.Second) // messages keep arriving after the heal too
	published := pub.stop()

	testenv.Eventually(t, 3*time.Minute, "every published message in the inbox", func() (bool, error) {
		n, err := count(ctx, pool, `SELECT count(*) FROM inbox WHERE consumer = 'partition-consumer'`)
		return n >= len(published), err
	})
	abandoned := metricValue(t, reg, "outboxrelay_inbox_broker_abandoned_total")
	stopConsumer()
	// Under ignore the cluster stays split in RabbitMQ's view until the
	// losing side restarts; then copies still in the queue (returned
	// unacked from node 1) are handled by a consumer of the same name.
	testenv.ServicesCmd(t, "netns-heal", "--wait")
	cfg.AMQPURLs, cfg.Registerer = order(urls, 2), nil
	stopConsumer = startConsumer(t, cfg)
	testenv.Eventually(t, 2*time.Minute, "the queue to be empty", func() (bool, error) {
		return queueEmpty(urls[1], queue)
	})
	stopConsumer()

	var rows, distinct, inboxRows int
	if err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT message_id), (SELECT count(*) FROM inbox WHERE consumer = 'partition-consumer') FROM applied`).
		Scan(&rows, &distinct, &inboxRows); err != nil {
		t.Fatal(err)
	}
	gap, gapAt := longestGap(t, pool)
	unknown := unpublishedApplied(t, pool, published)
	t.Logf("inbox consumer's node isolated %s (ignore): %d published, %d inbox rows, %d applied, %d applied twice, %d unknown; "+
		"%d duplicates delivered and recognised, %d ack errors; %v nodes left; longest gap in applications %.1fs, starting %.1fs after the cut (healed at %.1fs)",
		inboxIsolation, len(published), inboxRows, rows, rows-distinct, unknown, duplicates.Load(), ackErrs.Load(), abandoned,
		gap.Seconds(), gapAt.Sub(cutAt).Seconds(), healedAt.Sub(cutAt).Seconds())
	if l := strings.TrimSpace(logs.String()); l != "" {
		t.Logf("consumer's warnings:\n%s", l)
	}
	if inboxRows != len(published) || distinct != len(published) {
		t.Errorf("%d messages published, but %d inbox rows and %d distinct applied messages", len(published), inboxRows, distinct)
	}
	if rows != distinct {
		t.Errorf("%d messages applied twice", rows-distinct)
	}
	if unknown > 0 {
		t.Errorf("%d applied messages were never published", unknown)
	}
	if gap > maxStall {
		t.Errorf("no message applied for %.1fs while a majority was reachable; want at most %s", gap.Seconds(), maxStall)
	}
}

// publisher sends persistent messages at publishRate to a queue through one
// node, each confirmed before the next; a message not confirmed is sent
// again, with the same id, until it is.
type publisher struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	ids    []string
}

func startPublisher(t *testing.T, url, queue string) *publisher {
	ctx, cancel := context.WithCancel(context.Background())
	p := &publisher{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		var ch *amqp.Channel
		tick := time.NewTicker(time.Second / publishRate)
		defer tick.Stop()
		for ctx.Err() == nil {
			<-tick.C
			id := uuid.NewString()
			for { // the current message is finished even when stopping
				if ch == nil {
					ch = confirmChannel(url)
				}
				if ch != nil && publishConfirmed(ch, queue, id) {
					break
				}
				if ch != nil {
					_ = ch.Close()
					ch = nil
				}
				<-tick.C // the retry keeps the publishing pace
			}
			p.mu.Lock()
			p.ids = append(p.ids, id)
			p.mu.Unlock()
		}
		if ch != nil {
			_ = ch.Close()
		}
	}()
	t.Cleanup(func() { p.stop() })
	return p
}

// stop ends publishing and returns the ids of every message published.
func (p *publisher) stop() []string {
	p.cancel()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.ids...)
}

func confirmChannel(url string) *amqp.Channel {
	conn, err := amqp.Dial(url)
	if err != nil {
		return nil
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		_ = conn.Close()
		return nil
	}
	// The channel owns the connection: closing it closes both.
	go func() {
		<-ch.NotifyClose(make(chan *amqp.Error, 1))
		_ = conn.Close()
	}()
	return ch
}

func publishConfirmed(ch *amqp.Channel, queue, id string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, amqp.Publishing{
		MessageId: id, Body: []byte(id), DeliveryMode: amqp.Persistent, ContentType: "text/plain",
	})
	if err != nil {
		return false
	}
	ok, err := dc.WaitContext(ctx)
	return err == nil && ok
}

// startConsumer runs an inbox consumer until the returned function (or the
// end of the test) stops it.
func startConsumer(t *testing.T, cfg inbox.Config) (stop func()) {
	t.Helper()
	c, err := inbox.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("inbox consumer: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func count(ctx context.Context, pool *pgxpool.Pool, query string) (int, error) {
	var n int
	err := pool.QueryRow(ctx, query).Scan(&n)
	return n, err
}

// longestGap is the longest time between two consecutive applications, and
// when it began.
func longestGap(t *testing.T, pool *pgxpool.Pool) (time.Duration, time.Time) {
	t.Helper()
	var secs float64
	var at time.Time
	if err := pool.QueryRow(context.Background(), `
		SELECT extract(epoch FROM gap)::float8, prev FROM (
			SELECT at - lag(at) OVER (ORDER BY at) AS gap, lag(at) OVER (ORDER BY at) AS prev FROM applied
		) g WHERE gap IS NOT NULL ORDER BY gap DESC LIMIT 1`).Scan(&secs, &at); err != nil {
		t.Fatal(err)
	}
	return time.Duration(secs * float64(time.Second)), at
}

// unpublishedApplied counts applied messages that are not among published.
func unpublishedApplied(t *testing.T, pool *pgxpool.Pool, published []string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(),
		`SELECT count(*) FROM applied WHERE NOT (message_id = ANY($1))`, published).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// queueEmpty reports whether queue holds no ready message, asked through
// url.
func queueEmpty(url, queue string) (bool, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return false, err
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return false, err
	}
	return q.Messages == 0, nil
}

func deleteQueues(url string, names ...string) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return
	}
	defer conn.Close()
	for _, n := range names {
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(n, false, false, false)
			_ = ch.Close()
		}
	}
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}
