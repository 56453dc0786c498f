package relay_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
	"github.com/outboxrelay/outboxrelay/relay"
)

type testBundle struct {
	env   testenv.Env
	pool  *pgxpool.Pool
	ch    *amqp.Channel
	queue string
	// batches receives every committed batch (the relay's test signal).
	batches chan relay.BatchResult
	relay   *relay.Relay
}

// setup gives a migrated schema, a quorum queue and a relay running on
// them until the test ends. cfg may adjust the relay's configuration.
func setup(t *testing.T, cfg func(*relay.Config)) *testBundle {
	t.Helper()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	b := &testBundle{env: env, pool: testenv.Pool(t, dsn), batches: make(chan relay.BatchResult, 1000)}
	_, b.ch = testenv.AMQP(t, env.AMQPURL)
	b.queue = testenv.Queue(t, b.ch, true)
	c := relay.Config{
		AMQPURLs:     []string{env.AMQPURL},
		PollInterval: time.Hour, // notifications alone must wake the relay
		Logger:       testLogger(),
		OnBatch:      func(r relay.BatchResult) { b.batches <- r },
	}
	if cfg != nil {
		cfg(&c)
	}
	b.relay = startRelay(t, b.pool, c)
	return b
}

// testLogger discards the relay's logs, or prints them with
// RELAY_TEST_LOG=1 (to read what a failing test's relay did).
func testLogger() *slog.Logger {
	if os.Getenv("RELAY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func startRelay(t *testing.T, pool *pgxpool.Pool, c relay.Config) *relay.Relay {
	t.Helper()
	r, err := relay.New(pool, c)
	if err != nil {
		t.Fatalf("relay.New: %v", err)
	}
	testenv.RunInBackground(t, r.Run)
	return r
}

// waitPublished consumes batch signals until the given message ids were
// all published.
func (b *testBundle) waitPublished(t *testing.T, ids ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	timeout := time.After(30 * time.Second)
	for len(want) > 0 {
		select {
		case r := <-b.batches:
			for _, id := range r.Published {
				delete(want, id)
			}
		case <-timeout:
			t.Fatalf("%d messages not published within 30s", len(want))
		}
	}
}

// waitRefused consumes batch signals until one charged or deferred a row.
func (b *testBundle) waitRefused(t *testing.T) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case r := <-b.batches:
			if r.Failed > 0 || r.Deferred > 0 {
				return
			}
		case <-timeout:
			t.Fatal("no refused row within 30s")
		}
	}
}

func (b *testBundle) waitFailed(t *testing.T) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case r := <-b.batches:
			if r.Failed > 0 {
				return
			}
		case <-timeout:
			t.Fatal("no failed attempt within 30s")
		}
	}
}

func TestPublishesPlainSQLAndGoRowsWithTheirProperties(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()

	// JSON text with a backslash, a quote and non-ASCII characters: the
	// payload must arrive byte for byte as the UTF-8 encoding of the text.
	jsonText := `{"note":"caf\u00e9 \\ \"q\"","name":"Zoë ☕"}`
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var sqlIDs []string
	rows, err := tx.Query(ctx, `
		INSERT INTO outbox (routing_key, payload, headers)
		VALUES ($1, convert_to($2, 'UTF8'), '{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","n":7,"ok":true}'),
		       ($1, convert_to('plain', 'UTF8'), '{}')
		RETURNING message_id::text`, b.queue, jsonText)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		sqlIDs = append(sqlIDs, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	goIDs, err := outbox.Enqueue(ctx, tx,
		outbox.Message{RoutingKey: b.queue, Payload: []byte{0, 1, 2, 255}, ContentType: "application/octet-stream",
			Headers: map[string]any{"tenant": "acme", "nested": map[string]any{"a": 1.5}}},
		outbox.Message{RoutingKey: b.queue, Payload: []byte(`{"go":true}`)},
	)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	b.waitPublished(t, append(sqlIDs, goIDs...)...)
	got := testenv.Consume(t, b.ch, b.queue, 4, 30*time.Second)
	byID := map[string]amqp.Delivery{}
	for _, d := range got {
		byID[d.MessageId] = d
	}
	check := func(id string, body []byte, contentType string, headers amqp.Table) {
		t.Helper()
		d, ok := byID[id]
		if !ok {
			t.Fatalf("message %s did not arrive", id)
		}
		if string(d.Body) != string(body) {
			t.Errorf("%s: body %q, want %q", id, d.Body, body)
		}
		if d.ContentType != contentType {
			t.Errorf("%s: content type %q, want %q", id, d.ContentType, contentType)
		}
		if d.DeliveryMode != amqp.Persistent {
			t.Errorf("%s: delivery mode %d, want persistent", id, d.DeliveryMode)
		}
		if d.Timestamp.IsZero() {
			t.Errorf("%s: no timestamp", id)
		}
		for k, v := range headers {
			if !equalHeader(d.Headers[k], v) {
				t.Errorf("%s: header %s = %#v, want %#v", id, k, d.Headers[k], v)
			}
		}
	}
	check(sqlIDs[0], []byte(jsonText), "application/json", amqp.Table{
		"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "n": int64(7), "ok": true})
	check(sqlIDs[1], []byte("plain"), "application/json", nil)
	check(goIDs[0], []byte{0, 1, 2, 255}, "application/octet-stream", amqp.Table{"tenant": "acme", "nested": amqp.Table{"a": 1.5}})
	check(goIDs[1], []byte(`{"go":true}`), "application/json", nil)

	var unpublished int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&unpublished); err != nil {
		t.Fatal(err)
	}
	if unpublished != 0 {
		t.Errorf("%d rows not marked published", unpublished)
	}
}

func equalHeader(got, want any) bool {
	switch w := want.(type) {
	case amqp.Table:
		g, ok := got.(amqp.Table)
		if !ok || len(g) != len(w) {
			return false
		}
		for k := range w {
			if !equalHeader(g[k], w[k]) {
				return false
			}
		}
		return true
	default:
		return got == want
	}
}

func TestRolledBackTransactionPublishesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()

	tx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Enqueue(ctx, tx, outbox.Message{RoutingKey: b.queue, Payload: []byte("rolled back")}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// A committed row written after the rolled-back one: once it has been
	// published, anything the rollback could have published would have
	// been too (the relay claims in id order).
	ids, err := outbox.Enqueue(ctx, b.pool, outbox.Message{RoutingKey: b.queue, Payload: []byte("committed")})
	if err != nil {
		t.Fatal(err)
	}
	b.waitPublished(t, ids...)
	got := testenv.Consume(t, b.ch, b.queue, 1, 10*time.Second)
	if string(got[0].Body) != "committed" {
		t.Fatalf("got %q, want the committed row", got[0].Body)
	}
	q, err := b.ch.QueueDeclarePassive(b.queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	if err != nil {
		t.Fatal(err)
	}
	if q.Messages != 0 {
		t.Fatalf("queue holds %d more messages; the rolled-back row leaked", q.Messages)
	}
}

func TestFailingRowsAreRetriedAndDoNotBlockOthers(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *relay.Config) { c.MaxPayloadBytes = 1024 })
	ctx := context.Background()

	// An exchange with no binding: every message to it is returned.
	lonely := testenv.Name("x")
	if err := b.ch.ExchangeDeclare(lonely, "direct", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	bad := []outbox.Message{
		{Exchange: lonely, RoutingKey: "nowhere", Payload: []byte("unroutable")},
		{Exchange: testenv.Name("missing"), RoutingKey: "k", Payload: []byte("no exchange")},
		{RoutingKey: b.queue, Payload: make([]byte, 2048)},
	}
	badIDs, err := outbox.Enqueue(ctx, b.pool, bad...)
	if err != nil {
		t.Fatal(err)
	}
	goodIDs, err := outbox.Enqueue(ctx, b.pool,
		outbox.Message{RoutingKey: b.queue, Payload: []byte("one")},
		outbox.Message{RoutingKey: b.queue, Payload: []byte("two")})
	if err != nil {
		t.Fatal(err)
	}
	b.waitPublished(t, goodIDs...)
	got := testenv.Consume(t, b.ch, b.queue, 2, 10*time.Second)
	if string(got[0].Body)+string(got[1].Body) != "onetwo" {
		t.Fatalf("got %q and %q", got[0].Body, got[1].Body)
	}

	// Another worker may have claimed the bad rows (committed first) and
	// still be waiting for the broker's answer: await their charge.
	testenv.Eventually(t, 30*time.Second, "the bad rows charged an attempt", func() (bool, error) {
		var charged int
		err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE attempts > 0 AND message_id = ANY($1)`, badIDs).Scan(&charged)
		return charged == len(badIDs), err
	})
	wantErr := []string{"unroutable: returned by broker: 312 NO_ROUTE", "no_exchange: exchange", "too_large: payload is 2048 bytes"}
	for i, id := range badIDs {
		var (
			attempts            int
			lastErr             *string
			published           *time.Time
			availableAfterClaim bool
		)
		err := b.pool.QueryRow(ctx, `SELECT attempts, last_error, published_at, available_at > created_at
			FROM outbox WHERE message_id = $1`, id).Scan(&attempts, &lastErr, &published, &availableAfterClaim)
		if err != nil {
			t.Fatal(err)
		}
		if attempts < 1 || lastErr == nil || !strings.HasPrefix(*lastErr, wantErr[i]) {
			t.Errorf("row %d: attempts %d, last_error %v; want an attempt with %q", i, attempts, deref(lastErr), wantErr[i])
		}
		if published != nil {
			t.Errorf("row %d: marked published", i)
		}
		if !availableAfterClaim {
			t.Errorf("row %d: available_at not pushed back", i)
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

func TestRowIsParkedDeadAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *relay.Config) {
		c.MaxAttempts = 3
		c.RetryBase = time.Millisecond
		c.RetryMax = time.Millisecond
		c.PollInterval = 5 * time.Millisecond // retries are found by polling
	})
	ctx := context.Background()
	ids, err := outbox.Enqueue(ctx, b.pool, outbox.Message{Exchange: "amq.direct", RoutingKey: testenv.Name("unbound"), Payload: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "row parked dead", func() (bool, error) {
		var dead bool
		err := b.pool.QueryRow(ctx, `SELECT dead_at IS NOT NULL FROM outbox WHERE message_id = $1`, ids[0]).Scan(&dead)
		return dead, err
	})
	var attempts int
	var lastErr string
	if err := b.pool.QueryRow(ctx, `SELECT attempts, last_error FROM outbox WHERE message_id = $1`, ids[0]).Scan(&attempts, &lastErr); err != nil {
		t.Fatal(err)
	}
	if attempts != 3 || !strings.Contains(lastErr, "NO_ROUTE") {
		t.Fatalf("attempts %d, last_error %q; want 3 attempts ending unroutable", attempts, lastErr)
	}
}

func TestManyRowsDrainAcrossBatchesAndWorkers(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *relay.Config) { c.BatchSize = 100; c.Workers = 3 })
	ctx := context.Background()
	msgs := make([]outbox.Message, 2500)
	for i := range msgs {
		msgs[i] = outbox.Message{RoutingKey: b.queue, Payload: []byte("m")}
	}
	ids, err := outbox.Enqueue(ctx, b.pool, msgs...)
	if err != nil {
		t.Fatal(err)
	}
	b.waitPublished(t, ids...)
	got := testenv.Consume(t, b.ch, b.queue, len(ids), 30*time.Second)
	seen := map[string]int{}
	for _, d := range got {
		seen[d.MessageId]++
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Fatalf("message %s arrived %d times", id, seen[id])
		}
	}
}

func TestReadyFollowsTheBrokerAndReconnects(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	u, _ := url.Parse(env.AMQPURL)
	proxy := testenv.NewProxy(t, u.Host, false)
	u.Host = proxy.Addr()
	r := startRelay(t, pool, relay.Config{
		AMQPURLs:     []string{u.String()},
		ReconnectMin: time.Millisecond,
		ReconnectMax: 20 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	ctx := context.Background()
	if err := r.Ready(ctx); !errors.Is(err, relay.ErrBrokerUnavailable) {
		t.Fatalf("Ready with the broker unreachable = %v, want ErrBrokerUnavailable", err)
	}
	proxy.SetUp(true)
	testenv.Eventually(t, 30*time.Second, "ready once the broker is reachable", func() (bool, error) {
		err := r.Ready(ctx)
		return err == nil, err
	})
	proxy.SetUp(false) // cuts the connection
	testenv.Eventually(t, 30*time.Second, "not ready after the connection is cut", func() (bool, error) {
		return r.Ready(ctx) != nil, nil
	})
	proxy.SetUp(true)
	testenv.Eventually(t, 30*time.Second, "ready again after reconnecting", func() (bool, error) {
		err := r.Ready(ctx)
		return err == nil, err
	})
}

func TestRunReturnsPromptlyWhenCancelled(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	r, err := relay.New(pool, relay.Config{AMQPURLs: []string{env.AMQPURL}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := r.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	testenv.Eventually(t, 30*time.Second, "relay ready", func() (bool, error) {
		err := r.Ready(ctx)
		return err == nil, err
	})
	cancel()
	wg.Wait() // goleak in TestMain checks nothing was left behind
}

// A claim asks for what the byte budget can keep: after a batch the
// budget cut at k rows, the next claim takes 2k, not BatchSize rows the
// database locks and reads only to release again. 300 rows of 10 KiB
// under a 32 KiB budget keep 3 a batch; claiming 500 each time would
// release about 15,000 rows in all, sized claims at most the first
// claim's 500 and then one row released for each published. The same
// holds for one key's deep backlog (runs are claimed from the key's
// head), and its rows still go out in order.
func TestClaimShrinksToWhatTheBudgetKeeps(t *testing.T) {
	t.Parallel()
	for _, key := range []string{"", "hot"} {
		t.Run("key="+key, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(c *relay.Config) {
				c.Workers = 1
				c.MaxPayloadBytes = 16 << 10
				c.MaxBatchBytes = 32 << 10
			})
			ctx := context.Background()
			msgs := make([]outbox.Message, 300)
			for i := range msgs {
				msgs[i] = outbox.Message{RoutingKey: b.queue, OrderingKey: key, Payload: bytes.Repeat([]byte("p"), 10<<10)}
			}
			ids, err := outbox.Enqueue(ctx, b.pool, msgs...)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]bool{}
			for _, id := range ids {
				want[id] = true
			}
			var order []string
			released, batches := 0, 0
			timeout := time.After(time.Minute)
			for len(want) > 0 {
				select {
				case r := <-b.batches:
					batches++
					released += r.Released
					order = append(order, r.Published...)
					for _, id := range r.Published {
						delete(want, id)
					}
				case <-timeout:
					t.Fatalf("%d messages not published within a minute", len(want))
				}
			}
			t.Logf("%d batches published %d rows and released %d", batches, len(order), released)
			if batches < 300/3 {
				t.Errorf("%d batches for 300 rows of 10 KiB under a 32 KiB budget: the budget did not cut them", batches)
			}
			if released > 500+len(order) {
				t.Errorf("%d rows released for %d published: claims did not shrink to what the budget keeps", released, len(order))
			}
			if key != "" && !slices.Equal(order, ids) {
				t.Errorf("key %q: rows published out of order", key)
			}
		})
	}
}
