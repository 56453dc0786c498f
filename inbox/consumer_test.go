package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// One message published five times changes the business
// table once; four copies are recognised as duplicates, also when handled
// concurrently.
func TestSameMessageFiveTimesIsAppliedOnce(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	var logs testenv.LogBuffer
	b := setup(t, func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
		calls.Add(1)
		return applyHandler(ctx, tx, m)
	}, setupOpts{cfg: func(c *inbox.Config) {
		c.Concurrency = 4
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) // the default level, Info
	}})
	id := uuid.NewString()
	for range 5 {
		b.publish(t, "", b.queue, id, "order 1")
	}
	b.events.wait(t, "one applied and four duplicates", func(evs []inbox.Event) bool {
		return count(evs, inbox.EventApplied, id)+count(evs, inbox.EventDuplicate, id) == 5
	})
	evs, _ := b.events.snapshot()
	if a := count(evs, inbox.EventApplied, id); a != 1 {
		t.Errorf("applied %d times, want 1", a)
	}
	if n := b.appliedCount(t, id); n != 1 {
		t.Errorf("business table has %d rows for the message, want 1", n)
	}
	if c := calls.Load(); c != 1 {
		t.Errorf("handler called %d times, want 1", c)
	}
	if d := b.metric(t, "outboxrelay_inbox_duplicates_total"); d != 4 {
		t.Errorf("duplicates_total = %v, want 4", d)
	}
	if n := len(regexp.MustCompile(`level=INFO msg="duplicate message recognised by the inbox table: acked, handler not called" .*message_id=`+id).FindAllString(logs.String(), -1)); n != 4 {
		t.Errorf("%d duplicate lines at the default level, want 4:\n%s", n, logs.String())
	}
}

// The consumer loses its connection after the commit and
// before the ack. The broker redelivers; the inbox recognises the copy and
// acks it without calling the handler again.
func TestAckLostAfterCommitIsRecognisedAsDuplicate(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	proxy := testenv.NewProxy(t, testenv.BrokerAddr(t, env.AMQPURL), true)
	var calls atomic.Int32
	var cut sync.Once
	b := setup(t, func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
		calls.Add(1)
		return applyHandler(ctx, tx, m)
	}, setupOpts{proxy: proxy, cfg: func(c *inbox.Config) {
		// The crash: the connection dies between commit and ack.
		inbox.SetAfterCommit(c, func(inbox.Message) { cut.Do(proxy.Cut) })
	}})
	id := uuid.NewString()
	b.publish(t, "", b.queue, id, "order 2")

	evs := b.events.wait(t, "the redelivery acked as a duplicate", func(evs []inbox.Event) bool {
		for _, e := range evs {
			if e.Kind == inbox.EventDuplicate && e.MessageID == id && e.AckErr == nil {
				return true
			}
		}
		return false
	})
	// The ack written after the cut never reached the broker (the client
	// may not even see an error: the bytes die in the dead socket), hence
	// the redelivery this test waited for.
	if count(evs, inbox.EventSubscribed, "*") < 2 {
		t.Errorf("consumer did not subscribe again after the cut")
	}
	if n := b.appliedCount(t, id); n != 1 {
		t.Errorf("business table has %d rows, want 1", n)
	}
	if c := calls.Load(); c != 1 {
		t.Errorf("handler called %d times, want 1", c)
	}
	q, err := b.ch.QueueDeclarePassive(b.queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	if err == nil && q.Messages != 0 {
		t.Errorf("%d messages left in the queue", q.Messages)
	}
}

// A handler failing twice then succeeding applies the message
// once, and each retry went through the broker's retry queue (x-death says
// which queue expired it) with the attempt count and last error in headers.
func TestTransientFailuresAreRetriedThroughTheBroker(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []inbox.Message
	b := setup(t, func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
		mu.Lock()
		seen = append(seen, m)
		mu.Unlock()
		if m.Attempt < 3 {
			return fmt.Errorf("downstream unavailable (attempt %d)", m.Attempt)
		}
		return applyHandler(ctx, tx, m)
	}, setupOpts{exchange: true})
	id := uuid.NewString()
	b.send(t, b.exchange, "order.created", amqp.Publishing{
		MessageId: id, Body: []byte("order 3"), ContentType: "text/plain", DeliveryMode: amqp.Persistent,
		Type: "order.created", CorrelationId: "corr-3", ReplyTo: "replies", Priority: 4, AppId: "shop",
	})
	b.events.wait(t, "the message applied", func(evs []inbox.Event) bool {
		return count(evs, inbox.EventApplied, id) == 1
	})

	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 {
		t.Fatalf("handler called %d times, want 3", len(seen))
	}
	for i, m := range seen {
		if m.Attempt != i+1 {
			t.Errorf("call %d: attempt %d", i+1, m.Attempt)
		}
		// The AMQP properties reach the handler, on the retry copies too.
		if m.Type != "order.created" || m.CorrelationID != "corr-3" || m.ReplyTo != "replies" || m.Priority != 4 || m.AppID != "shop" {
			t.Errorf("attempt %d: properties type %q correlation %q reply_to %q priority %d app %q", m.Attempt, m.Type, m.CorrelationID, m.ReplyTo, m.Priority, m.AppID)
		}
		if m.Exchange != b.exchange || m.RoutingKey != "order.created" {
			t.Errorf("attempt %d: exchange %q routing key %q, want the original ones", m.Attempt, m.Exchange, m.RoutingKey)
		}
		if i == 0 {
			if _, ok := m.Headers["x-death"]; ok {
				t.Errorf("first delivery already dead-lettered once")
			}
			continue
		}
		// The copy expired in the retry queue for this attempt's delay and
		// was dead-lettered back by the broker.
		wantQueue := inbox.RetryQueue(b.queue, testDelays[i-1])
		if q := m.Headers["x-first-death-queue"]; q != wantQueue {
			t.Errorf("attempt %d came back from %v, want %s", m.Attempt, q, wantQueue)
		}
		if r := m.Headers["x-first-death-reason"]; r != "expired" {
			t.Errorf("attempt %d: death reason %v, want expired", m.Attempt, r)
		}
		if n := m.Headers[inbox.HeaderAttempts]; n != int64(i) {
			t.Errorf("attempt %d: %s = %v, want %d", m.Attempt, inbox.HeaderAttempts, n, i)
		}
		want := fmt.Sprintf("downstream unavailable (attempt %d)", i)
		if e := m.Headers[inbox.HeaderLastError]; e != want {
			t.Errorf("attempt %d: %s = %v, want %q", m.Attempt, inbox.HeaderLastError, e, want)
		}
	}
	if n := b.appliedCount(t, id); n != 1 {
		t.Errorf("business table has %d rows, want 1", n)
	}
	if r := b.metric(t, "outboxrelay_inbox_retried_total"); r != 2 {
		t.Errorf("retried_total = %v, want 2", r)
	}
}

// A permanent error, a poison message and a message without
// message-id end in the dead-letter queue with attempts and error headers;
// the other messages are processed meanwhile.
func TestPermanentPoisonAndUnidentifiedMessagesAreDeadLettered(t *testing.T) {
	t.Parallel()
	var noIDCalls atomic.Int32
	b := setup(t, func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
		switch string(m.Body) {
		case "permanent":
			return inbox.Permanent(errors.New("order refers to an unknown customer"))
		case "poison":
			return errors.New("cannot parse order")
		case "no id":
			noIDCalls.Add(1)
		}
		return applyHandler(ctx, tx, m)
	}, setupOpts{cfg: func(c *inbox.Config) { c.MaxAttempts = 3 }})
	poison, permanent := uuid.NewString(), uuid.NewString()
	b.publish(t, "", b.queue, poison, "poison")
	b.publish(t, "", b.queue, permanent, "permanent")
	b.publish(t, "", b.queue, "", "no id")
	var normal []string
	for i := range 10 {
		id := uuid.NewString()
		normal = append(normal, id)
		b.publish(t, "", b.queue, id, fmt.Sprintf("normal %d", i))
	}
	evs := b.events.wait(t, "three dead-lettered and ten applied", func(evs []inbox.Event) bool {
		return count(evs, inbox.EventDeadLettered, "*") == 3 && count(evs, inbox.EventApplied, "*") == 10
	})
	// The poison message's retries did not hold the others back: a normal
	// message was applied before the poison one was given up.
	firstApplied, poisonDead := -1, -1
	for i, e := range evs {
		if e.Kind == inbox.EventApplied && firstApplied < 0 {
			firstApplied = i
		}
		if e.Kind == inbox.EventDeadLettered && e.MessageID == poison {
			poisonDead = i
		}
	}
	if firstApplied > poisonDead {
		t.Errorf("no message was applied while the poison message was being retried")
	}
	if noIDCalls.Load() != 0 {
		t.Errorf("the handler was called for a message without message-id")
	}

	dead := testenv.Consume(t, b.ch, inbox.DeadQueue(b.queue), 3, waitLimit)
	byBody := map[string]amqp.Delivery{}
	for _, d := range dead {
		byBody[string(d.Body)] = d
	}
	cases := []struct {
		body, id, reason, errText string
		attempts                  int64
	}{
		{"poison", poison, inbox.DeadReasonMaxAttempts, "cannot parse order", 3},
		{"permanent", permanent, inbox.DeadReasonPermanent, "permanent: order refers to an unknown customer", 1},
		{"no id", "", inbox.DeadReasonNoMessageID, "message has no message-id", 0},
	}
	for _, tc := range cases {
		d, ok := byBody[tc.body]
		if !ok {
			t.Errorf("%s: not in the dead-letter queue", tc.body)
			continue
		}
		if d.MessageId != tc.id {
			t.Errorf("%s: message-id %q, want %q", tc.body, d.MessageId, tc.id)
		}
		if r := d.Headers[inbox.HeaderDeadReason]; r != tc.reason {
			t.Errorf("%s: %s = %v, want %s", tc.body, inbox.HeaderDeadReason, r, tc.reason)
		}
		if a := d.Headers[inbox.HeaderAttempts]; a != tc.attempts {
			t.Errorf("%s: %s = %v, want %d", tc.body, inbox.HeaderAttempts, a, tc.attempts)
		}
		if e, _ := d.Headers[inbox.HeaderLastError].(string); !strings.Contains(e, tc.errText) {
			t.Errorf("%s: %s = %q, want it to contain %q", tc.body, inbox.HeaderLastError, e, tc.errText)
		}
		if d.DeliveryMode != amqp.Persistent {
			t.Errorf("%s: dead-letter copy is not persistent", tc.body)
		}
	}
	for _, id := range append(normal, poison, permanent) {
		want := 1
		if id == poison || id == permanent {
			want = 0
		}
		if n := b.appliedCount(t, id); n != want {
			t.Errorf("message %s applied %d times, want %d", id, n, want)
		}
	}
	if v := b.metric(t, "outboxrelay_inbox_dead_lettered_total", "reason", inbox.DeadReasonMaxAttempts); v != 1 {
		t.Errorf("dead_lettered_total{reason=max_attempts} = %v, want 1", v)
	}
}

// The connection is cut while messages are being consumed;
// the consumer reconnects by itself and every message is applied once.
func TestResumesAfterConnectionCut(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	proxy := testenv.NewProxy(t, testenv.BrokerAddr(t, env.AMQPURL), true)
	b := setup(t, nil, setupOpts{noStart: true, proxy: proxy, cfg: func(c *inbox.Config) { c.Concurrency = 4 }})
	const n = 300
	bodies := map[string]string{}
	for i := range n {
		bodies[uuid.NewString()] = fmt.Sprintf("order %d", i)
	}
	b.publishMany(t, bodies)
	run(t, b.consumer)
	b.events.wait(t, "a third applied", func(evs []inbox.Event) bool {
		return count(evs, inbox.EventApplied, "*") >= n/3
	})
	proxy.Cut()
	b.events.wait(t, "every message applied or recognised", func(evs []inbox.Event) bool {
		done := map[string]bool{}
		for _, e := range evs {
			if e.Kind == inbox.EventApplied || (e.Kind == inbox.EventDuplicate && e.AckErr == nil) {
				done[e.MessageID] = true
			}
		}
		return len(done) == n
	})
	evs, _ := b.events.snapshot()
	if count(evs, inbox.EventSubscribed, "*") < 2 {
		t.Errorf("the consumer did not subscribe again after the cut")
	}
	var rows, distinct int
	if err := b.pool.QueryRow(context.Background(),
		`SELECT count(*), count(DISTINCT message_id) FROM applied`).Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	if rows != n || distinct != n {
		t.Errorf("business table: %d rows, %d distinct messages; want %d of each", rows, distinct, n)
	}
	t.Logf("duplicates absorbed after the cut: %d", count(evs, inbox.EventDuplicate, "*"))
}

// With a handler failing every call, the breaker pauses
// consumption after BreakerThreshold failures, lets one trial through after
// the cooldown, and closes once the handler recovers.
func TestBreakerPausesAndResumes(t *testing.T) {
	t.Parallel()
	var (
		mu        sync.Mutex
		state     = inbox.BreakerClosed
		trace     []string // handler calls and breaker states, in order
		failing   = true
		violation bool
	)
	b := setup(t, func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
		mu.Lock()
		trace = append(trace, "call")
		violation = violation || state == inbox.BreakerOpen
		fail := failing
		mu.Unlock()
		if fail {
			return errors.New("a dependency is down")
		}
		return applyHandler(ctx, tx, m)
	}, setupOpts{cfg: func(c *inbox.Config) {
		c.BreakerThreshold = 3
		c.BreakerCooldown = 200 * time.Millisecond
		c.MaxAttempts = 1000
		record := c.OnEvent
		c.OnEvent = func(e inbox.Event) {
			if e.Kind == inbox.EventBreaker {
				mu.Lock()
				state = e.Breaker
				trace = append(trace, e.Breaker.String())
				mu.Unlock()
			}
			record(e)
		}
	}})
	id := uuid.NewString()
	b.publish(t, "", b.queue, id, "order 6")

	breakerStates := func(evs []inbox.Event) []inbox.BreakerState {
		var s []inbox.BreakerState
		for _, e := range evs {
			if e.Kind == inbox.EventBreaker {
				s = append(s, e.Breaker)
			}
		}
		return s
	}
	// open, half-open (trial fails), open again.
	b.events.wait(t, "the breaker to open twice", func(evs []inbox.Event) bool {
		return len(breakerStates(evs)) >= 3
	})
	if v := b.metric(t, "outboxrelay_inbox_breaker_opens_total"); v < 2 {
		t.Errorf("breaker_opens_total = %v, want at least 2", v)
	}
	mu.Lock()
	failing = false
	mu.Unlock()
	b.events.wait(t, "the message applied", func(evs []inbox.Event) bool {
		return count(evs, inbox.EventApplied, id) == 1
	})
	b.events.wait(t, "the breaker to close", func(evs []inbox.Event) bool {
		s := breakerStates(evs)
		return len(s) > 0 && s[len(s)-1] == inbox.BreakerClosed
	})

	mu.Lock()
	defer mu.Unlock()
	got := strings.Join(trace, " ")
	want := "call call call open half_open call open half_open"
	if !strings.HasPrefix(got, want) {
		t.Errorf("trace %q\nwant it to start with %q", got, want)
	}
	if !strings.HasSuffix(got, "half_open call closed") {
		t.Errorf("trace %q\nwant it to end with one trial call closing the breaker", got)
	}
	if violation {
		t.Errorf("the handler was called while the breaker was open")
	}
	if v := b.metric(t, "outboxrelay_inbox_breaker_state"); v != float64(inbox.BreakerClosed) {
		t.Errorf("breaker_state = %v, want 0", v)
	}
	if n := b.appliedCount(t, id); n != 1 {
		t.Errorf("business table has %d rows, want 1", n)
	}
}

// A panicking handler and a handler that overruns HandlerTimeout are
// transient failures: retried, then applied once, the process unharmed.
func TestPanicAndTimeoutAreTransient(t *testing.T) {
	t.Parallel()
	b := setup(t, func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
		if m.Attempt == 1 {
			switch string(m.Body) {
			case "panic":
				panic("nil map somewhere")
			case "slow":
				<-ctx.Done() // HandlerTimeout must cancel this
				return ctx.Err()
			}
		}
		return applyHandler(ctx, tx, m)
	}, setupOpts{cfg: func(c *inbox.Config) { c.HandlerTimeout = 100 * time.Millisecond; c.Concurrency = 2 }})
	panicID, slowID := uuid.NewString(), uuid.NewString()
	b.publish(t, "", b.queue, panicID, "panic")
	b.publish(t, "", b.queue, slowID, "slow")
	evs := b.events.wait(t, "both applied", func(evs []inbox.Event) bool {
		return count(evs, inbox.EventApplied, panicID) == 1 && count(evs, inbox.EventApplied, slowID) == 1
	})
	for _, e := range evs {
		if e.Kind != inbox.EventRetried {
			continue
		}
		switch {
		case e.MessageID == panicID && !strings.Contains(e.Err.Error(), "handler panicked: nil map somewhere"):
			t.Errorf("panic retried with error %v", e.Err)
		case e.MessageID == slowID && !errors.Is(e.Err, context.DeadlineExceeded):
			t.Errorf("timeout retried with error %v", e.Err)
		}
	}
	if count(evs, inbox.EventRetried, "*") != 2 {
		t.Errorf("%d retries, want 2", count(evs, inbox.EventRetried, "*"))
	}
	for _, id := range []string{panicID, slowID} {
		if n := b.appliedCount(t, id); n != 1 {
			t.Errorf("message %s applied %d times, want 1", id, n)
		}
	}
}

// Retention deletes this consumer's rows older than the window, in
// batches, and leaves recent rows and other consumers' rows alone.
func TestRetentionDeletesOnlyOldRowsOfThisConsumer(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, setupOpts{noStart: true, cfg: func(c *inbox.Config) {
		c.RetentionWindow = 24 * time.Hour
		c.RetentionBatch = 100
	}})
	ctx := context.Background()
	_, err := b.pool.Exec(ctx, `
INSERT INTO inbox (consumer, message_id, processed_at)
SELECT 'test-consumer', 'old-' || i, now() - interval '2 days' FROM generate_series(1, 250) i
UNION ALL SELECT 'test-consumer', 'new-' || i, now() - interval '1 hour' FROM generate_series(1, 10) i
UNION ALL SELECT 'someone-else', 'old-' || i, now() - interval '2 days' FROM generate_series(1, 5) i`)
	if err != nil {
		t.Fatal(err)
	}
	run(t, b.consumer)
	testenv.Eventually(t, waitLimit, "old rows deleted", func() (bool, error) {
		var n int
		err := b.pool.QueryRow(ctx, `SELECT count(*) FROM inbox WHERE consumer = 'test-consumer' AND message_id LIKE 'old-%'`).Scan(&n)
		return n == 0, err
	})
	var mine, others int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE consumer = 'test-consumer'), count(*) FILTER (WHERE consumer <> 'test-consumer') FROM inbox`).Scan(&mine, &others); err != nil {
		t.Fatal(err)
	}
	if mine != 10 || others != 5 {
		t.Errorf("left %d rows of this consumer (want 10 recent) and %d of another (want 5)", mine, others)
	}
	testenv.Eventually(t, waitLimit, "pruned_total to count them", func() (bool, error) {
		return b.metric(t, "outboxrelay_inbox_pruned_total") == 250, nil
	})
}

// Ready follows the subscription, and Run returns when its context ends,
// leaving nothing running (goleak checks the rest in TestMain).
func TestReadyAndPromptShutdown(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, setupOpts{noStart: true})
	if err := b.consumer.Ready(); !errors.Is(err, inbox.ErrNotConsuming) {
		t.Fatalf("Ready before Run = %v, want ErrNotConsuming", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.consumer.Run(ctx) }()
	b.events.wait(t, "subscribed", func(evs []inbox.Event) bool {
		return count(evs, inbox.EventSubscribed, "*") == 1
	})
	if err := b.consumer.Ready(); err != nil {
		t.Fatalf("Ready while consuming = %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Run did not return after its context ended")
	}
	if err := b.consumer.Ready(); !errors.Is(err, inbox.ErrNotConsuming) {
		t.Errorf("Ready after Run = %v, want ErrNotConsuming", err)
	}
	if err := b.consumer.Run(context.Background()); err == nil {
		t.Errorf("second Run returned nil, want an error")
	}
}

// A broker that accepts TCP and never speaks
// does not hold Run for the handshake timeout (10 s): cancelling Run while
// it dials such a peer makes it return, and the peer sees the socket
// closed.
func TestShutdownWhileDiallingASilentBroker(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	b := setup(t, nil, setupOpts{noStart: true, cfg: func(c *inbox.Config) {
		c.AMQPURLs = []string{"amqp://guest:guest@" + ln.Addr().String() + "/"}
	}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.consumer.Run(ctx) }()
	var peer net.Conn
	select {
	case peer = <-accepted:
		defer peer.Close()
	case <-time.After(waitLimit):
		t.Fatal("the consumer never dialled the silent peer")
	}
	if _, err := io.ReadFull(peer, make([]byte, 8)); err != nil { // the protocol header
		t.Fatalf("read protocol header: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(5 * time.Second): // well inside the 10 s handshake timeout
		t.Fatal("Run did not return while dialling a silent broker")
	}
	_ = peer.SetReadDeadline(time.Now().Add(waitLimit))
	if _, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("peer read after Run returned = %v, want EOF", err)
	}
}

// A handler still running when Run's context ends is cancelled; its
// message is rolled back and stays in the queue for the next consumer.
func TestShutdownLeavesInFlightMessageQueued(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	var once sync.Once
	b := setup(t, func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
		if err := applyHandler(ctx, tx, m); err != nil {
			return err
		}
		once.Do(func() { close(started) })
		<-ctx.Done()
		return ctx.Err()
	}, setupOpts{noStart: true, cfg: func(c *inbox.Config) { c.HandlerTimeout = time.Hour }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.consumer.Run(ctx) }()
	id := uuid.NewString()
	b.publish(t, "", b.queue, id, "order 7")
	select {
	case <-started:
	case <-time.After(waitLimit):
		t.Fatal("handler did not start")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := b.appliedCount(t, id); n != 0 {
		t.Errorf("rolled-back message left %d business rows", n)
	}
	got := testenv.Consume(t, b.ch, b.queue, 1, waitLimit)
	if got[0].MessageId != id {
		t.Errorf("queue holds %q, want %q", got[0].MessageId, id)
	}
	evs, _ := b.events.snapshot()
	if k := count(evs, inbox.EventRetried, "*") + count(evs, inbox.EventRequeued, "*"); k != 0 {
		t.Errorf("shutdown charged the message an attempt (%d retry events)", k)
	}
}

// The broker cancels the consumer when its queue is deleted; the consumer
// keeps trying to subscribe and resumes once the queue is back.
func TestResubscribesAfterBrokerCancel(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, setupOpts{})
	b.events.wait(t, "subscribed", func(evs []inbox.Event) bool { return count(evs, inbox.EventSubscribed, "*") == 1 })
	if _, err := b.ch.QueueDelete(b.queue, false, false, false); err != nil {
		t.Fatal(err)
	}
	b.events.wait(t, "the consumer cancelled", func(evs []inbox.Event) bool { return count(evs, inbox.EventUnsubscribed, "*") >= 1 })
	if err := inbox.DeclareTopology(context.Background(), b.ch, inbox.Topology{Queue: b.queue, RetryDelays: testDelays}); err != nil {
		t.Fatal(err)
	}
	id := uuid.NewString()
	b.publish(t, "", b.queue, id, "after cancel")
	b.events.wait(t, "the message applied after resubscribing", func(evs []inbox.Event) bool {
		return count(evs, inbox.EventApplied, id) == 1
	})
	if err := b.consumer.Ready(); err != nil {
		t.Errorf("Ready after resubscribing = %v", err)
	}
}
