package inbox_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// A message whose header nearly fills a frame fails transiently: its retry
// copy, with the x-inbox-* headers added, would not fit in one frame (the
// broker would close the connection, and the message would come back and
// do it again). It is dead-lettered at once with the big header trimmed,
// the connection never drops, and the messages around it are applied.
func TestOversizedRetryCopyIsDeadLetteredTrimmed(t *testing.T) {
	t.Parallel()
	b := setup(t, func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
		if string(m.Body) == "big" {
			return errors.New("downstream unavailable")
		}
		return applyHandler(ctx, tx, m)
	}, setupOpts{})
	innocents := b.publishAround(t, 10, func() {
		b.publishHeaders(t, "", b.queue, "big-one", "big", amqp.Table{
			// The message fits a 131,072-byte frame with about 40 bytes
			// to spare; its retry copy, with the x-inbox-* headers (about
			// 150 bytes), would be over it and close the connection.
			"big":         strings.Repeat("v", 130_900),
			"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		})
	})
	evs := b.events.wait(t, "the big message dead-lettered and the others applied", func(evs []inbox.Event) bool {
		return count(evs, inbox.EventDeadLettered, "big-one") == 1 && allApplied(evs, innocents)
	})
	for _, e := range evs {
		if e.MessageID == "big-one" && e.Kind == inbox.EventDeadLettered && e.DeadReason != inbox.DeadReasonHeadersTooLarge {
			t.Errorf("dead reason %q, want %q", e.DeadReason, inbox.DeadReasonHeadersTooLarge)
		}
	}
	if n := count(evs, inbox.EventRetried, "big-one") + count(evs, inbox.EventRequeued, "big-one"); n != 0 {
		t.Errorf("the big message was retried or requeued %d times", n)
	}
	if v := b.metric(t, "outboxrelay_inbox_broker_reconnects_total"); v != 0 {
		t.Errorf("the consumer lost its connection %v times", v)
	}

	dead := b.deadOnly(t, 1)
	d := dead[0]
	if d.MessageId != "big-one" || string(d.Body) != "big" {
		t.Fatalf("dead-letter queue holds %q (%q), want the big message", d.MessageId, d.Body)
	}
	if _, kept := d.Headers["big"]; kept {
		t.Error("the 130 KB header was kept")
	}
	want := map[string]any{
		inbox.HeaderDeadReason: inbox.DeadReasonHeadersTooLarge,
		inbox.HeaderAttempts:   int64(1),
		inbox.HeaderLastError:  "downstream unavailable",
		inbox.HeaderConsumer:   "test-consumer",
		"traceparent":          "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
	}
	for k, v := range want {
		if d.Headers[k] != v {
			t.Errorf("dead copy: %s = %v, want %v", k, d.Headers[k], v)
		}
	}
	if note, _ := d.Headers[inbox.HeaderTrimmed].(string); !strings.Contains(note, `"big"`) {
		t.Errorf("dead copy: %s = %q, want it to name the removed header", inbox.HeaderTrimmed, note)
	}
	if v := b.metric(t, "outboxrelay_inbox_dead_lettered_total", "reason", inbox.DeadReasonHeadersTooLarge); v != 1 {
		t.Errorf("dead_lettered_total{reason=headers_too_large} = %v, want 1", v)
	}
}

// A publisher sets the consumer's own headers on a message sent straight to
// the main queue: x-inbox-attempts=999 would dead-letter it at once, and
// x-inbox-original-routing-key would lie to the handler. Neither is
// believed: the message starts at attempt 1 and is retried as usual.
func TestForgedInboxHeadersAreNotTrusted(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	seen := map[string][]inbox.Message{}
	b := setup(t, func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
		mu.Lock()
		seen[m.ID] = append(seen[m.ID], m)
		mu.Unlock()
		if strings.HasPrefix(string(m.Body), "forged") && m.Attempt == 1 {
			return errors.New("downstream unavailable")
		}
		return applyHandler(ctx, tx, m)
	}, setupOpts{exchange: true, cfg: func(c *inbox.Config) { c.MaxAttempts = 3 }})
	forged := amqp.Table{
		inbox.HeaderAttempts:           int64(999),
		inbox.HeaderOriginalRoutingKey: "forged.key",
		inbox.HeaderOriginalExchange:   "forged-exchange",
	}
	var direct, viaExchange string
	innocents := b.publishAround(t, 5, func() {
		// Through the default exchange, with the routing key a retry
		// queue's copy comes back with, and through the bound exchange.
		direct, viaExchange = uuid.NewString(), uuid.NewString()
		b.publishHeaders(t, "", b.queue, direct, "forged direct", forged)
		b.publishHeaders(t, b.exchange, "order.created", viaExchange, "forged via exchange", forged)
	})
	evs := b.events.wait(t, "the forged messages settled and the others applied", func(evs []inbox.Event) bool {
		settled := func(id string) bool {
			return count(evs, inbox.EventApplied, id)+count(evs, inbox.EventDeadLettered, id) > 0
		}
		return settled(direct) && settled(viaExchange) && allApplied(evs, innocents)
	})
	if n := count(evs, inbox.EventDeadLettered, "*"); n != 0 {
		t.Fatalf("%d messages dead-lettered, want none", n)
	}
	mu.Lock()
	defer mu.Unlock()
	for id, route := range map[string][2]string{direct: {"", b.queue}, viaExchange: {b.exchange, "order.created"}} {
		ms := seen[id]
		if len(ms) != 2 || ms[0].Attempt != 1 || ms[1].Attempt != 2 {
			t.Errorf("%s: attempts %v, want [1 2]", id, attempts(ms))
			continue
		}
		for _, m := range ms {
			if m.Exchange != route[0] || m.RoutingKey != route[1] {
				t.Errorf("%s attempt %d: exchange %q routing key %q, want %q %q", id, m.Attempt, m.Exchange, m.RoutingKey, route[0], route[1])
			}
		}
		if v, ok := ms[0].Headers[inbox.HeaderAttempts]; ok {
			t.Errorf("%s: the handler saw the forged %s = %v", id, inbox.HeaderAttempts, v)
		}
		// The retry went through the broker and was trusted on its way
		// back: the header is now the consumer's own.
		if v := ms[1].Headers[inbox.HeaderAttempts]; v != int64(1) {
			t.Errorf("%s: retried copy has %s = %v, want 1", id, inbox.HeaderAttempts, v)
		}
	}
	b.deadOnly(t, 0)
}

// A delivery the client cannot read (a header array of 9,000 elements:
// amqp091-go refuses containers over 8,192) closes the connection before
// the consumer sees it, and the broker returns every unacked message. The
// consumer takes messages one at a time after the loss, so only the
// culprit is in flight each time it strikes again; the queue's delivery
// limit (on by default) then dead-letters it alone. The messages
// prefetched beside it the first time are applied, not dead-lettered.
func TestUnreadableDeliveryIsIsolated(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, setupOpts{noStart: true, cfg: func(c *inbox.Config) { c.Prefetch = 10 }})
	// The culprit first, so that the whole first window of innocent
	// messages is in flight behind it when the connection dies.
	culprit := "unreadable"
	// amqp091-go checks only types when publishing (Table.Validate), not
	// widths: its writer sends what its reader refuses, and RabbitMQ
	// accepts and stores it.
	b.publishHeaders(t, "", b.queue, culprit, "wide", amqp.Table{"wide": make([]any, 9000)})
	innocents := map[string]string{}
	for i := range 30 {
		innocents[uuid.NewString()] = fmt.Sprintf("innocent %d", i)
	}
	b.publishMany(t, innocents)
	run(t, b.consumer)

	dead := inbox.DeadQueue(b.queue)
	testenv.Eventually(t, waitLimit, "the culprit dead-lettered and the others applied", func() (bool, error) {
		evs, _ := b.events.snapshot()
		n, err := b.depth(dead)
		return n > 1 || (n == 1 && allApplied(evs, keysOf(innocents))), err
	})
	if n, _ := b.depth(dead); n != 1 {
		t.Fatalf("dead-letter queue holds %d messages, want only the culprit", n)
	}
	msgs := managementGet(t, b.env, dead, 1)
	if id := msgs[0].Properties.MessageID; id != culprit {
		t.Errorf("dead-letter queue holds %q, want %q", id, culprit)
	}
	for id := range innocents {
		if n := b.appliedCount(t, id); n != 1 {
			t.Errorf("message %s applied %d times, want 1", id, n)
		}
	}
	if v := b.metric(t, "outboxrelay_inbox_isolations_total"); v < 1 {
		t.Errorf("isolations_total = %v, want at least 1", v)
	}
	if v := b.metric(t, "outboxrelay_inbox_isolated"); v != 1 {
		t.Errorf("isolated = %v, want 1 (the isolation period has not passed)", v)
	}
}

// After IsolationPeriod without a loss the consumer subscribes again with
// its normal prefetch. The prefetch is seen from the broker's side: with
// the handler holding the first message, the queue keeps back all but
// Prefetch of the rest.
func TestIsolationEndsAfterAQuietPeriod(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	proxy := testenv.NewProxy(t, testenv.BrokerAddr(t, env.AMQPURL), true)
	hold := make(chan struct{})
	b := setup(t, func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
		if string(m.Body) == "hold" {
			<-hold
		}
		return applyHandler(ctx, tx, m)
	}, setupOpts{proxy: proxy, cfg: func(c *inbox.Config) {
		c.Prefetch = 10
		c.IsolationPeriod = 300 * time.Millisecond
	}})
	b.events.wait(t, "subscribed", func(evs []inbox.Event) bool { return count(evs, inbox.EventSubscribed, "*") == 1 })
	proxy.Cut()
	b.events.wait(t, "subscribed with prefetch 1, then with the normal prefetch", func(evs []inbox.Event) bool {
		return count(evs, inbox.EventSubscribed, "*") == 3
	})
	if v := b.metric(t, "outboxrelay_inbox_isolations_total"); v != 1 {
		t.Errorf("isolations_total = %v, want 1", v)
	}
	if v := b.metric(t, "outboxrelay_inbox_isolated"); v != 0 {
		t.Errorf("isolated = %v after the period, want 0", v)
	}
	holdID := uuid.NewString()
	b.publish(t, "", b.queue, holdID, "hold")
	ids := map[string]string{}
	for i := range 20 {
		ids[uuid.NewString()] = fmt.Sprintf("after %d", i)
	}
	b.publishMany(t, ids)
	testenv.Eventually(t, waitLimit, "the broker to hand out a full prefetch window", func() (bool, error) {
		n, err := b.depth(b.queue)
		return n == 21-10, err // 10 unacked (the held one and 9 more), 11 ready
	})
	close(hold)
	b.events.wait(t, "all applied", func(evs []inbox.Event) bool {
		return allApplied(evs, append(keysOf(ids), holdID))
	})
}

// publishAround publishes n innocent messages, calls between, then n more,
// and returns the innocent ids.
func (b *testBundle) publishAround(t *testing.T, n int, between func()) []string {
	t.Helper()
	var ids []string
	batch := func(tag string) {
		m := map[string]string{}
		for i := range n {
			m[uuid.NewString()] = fmt.Sprintf("%s %d", tag, i)
		}
		b.publishMany(t, m)
		ids = append(ids, keysOf(m)...)
	}
	batch("before")
	between()
	batch("after")
	return ids
}

// depth is the number of ready messages in queue.
func (b *testBundle) depth(queue string) (int, error) {
	conn, err := amqp.Dial(b.env.AMQPURL)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	return q.Messages, err
}

// deadOnly checks that the dead-letter queue holds exactly n messages and
// returns them (consumed).
func (b *testBundle) deadOnly(t *testing.T, n int) []amqp.Delivery {
	t.Helper()
	dead := inbox.DeadQueue(b.queue)
	var got []amqp.Delivery
	if n > 0 {
		got = testenv.Consume(t, b.ch, dead, n, waitLimit)
	}
	if left, err := b.depth(dead); err != nil || left != 0 {
		t.Errorf("dead-letter queue: %d more messages than the %d expected (%v)", left, n, err)
	}
	return got
}

func allApplied(evs []inbox.Event, ids []string) bool {
	for _, id := range ids {
		if count(evs, inbox.EventApplied, id) == 0 {
			return false
		}
	}
	return true
}

func keysOf(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func attempts(ms []inbox.Message) []int {
	var a []int
	for _, m := range ms {
		a = append(a, m.Attempt)
	}
	return a
}

// managedMessage is a message as the management API shows it: read by the
// broker, so also one no AMQP client could decode.
type managedMessage struct {
	Properties struct {
		MessageID string         `json:"message_id"`
		Headers   map[string]any `json:"headers"`
	} `json:"properties"`
}

// managementGet reads up to n messages of queue through the management
// API, leaving them in the queue.
func managementGet(t *testing.T, env testenv.Env, queue string, n int) []managedMessage {
	t.Helper()
	if env.ManagementURL == "" {
		t.Skip("no management URL")
	}
	u := strings.TrimSuffix(env.ManagementURL, "/") + "/api/queues/%2F/" + url.PathEscape(queue) + "/get"
	body, _ := json.Marshal(map[string]any{"count": n, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 1000})
	// No keep-alive: an idle connection's goroutines would outlive the
	// test (goleak).
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Post(u, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var msgs []managedMessage
	if err := json.NewDecoder(resp.Body).Decode(&msgs); err != nil || len(msgs) == 0 {
		t.Fatalf("management get %s: status %s, %d messages, %v", queue, resp.Status, len(msgs), err)
	}
	return msgs
}

// While the breaker is open the consumer keeps the messages it prefetched
// instead of returning them: a quorum queue charges each return against
// the delivery limit, so returning them at every pause would dead-letter
// innocent messages during a long outage. No message is ever redelivered
// here (x-delivery-count, which the broker sets on a returned message,
// never appears).
func TestBreakerPauseReturnsNoMessage(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	failing := true
	var redelivered []string
	b := setup(t, func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if _, ok := m.Headers["x-delivery-count"]; ok {
			redelivered = append(redelivered, m.ID)
		}
		if failing {
			return errors.New("a dependency is down")
		}
		return applyHandler(ctx, tx, m)
	}, setupOpts{noStart: true, cfg: func(c *inbox.Config) {
		c.Prefetch = 5
		c.BreakerThreshold = 1
		c.BreakerCooldown = 20 * time.Millisecond
		c.MaxAttempts = 1000
	}})
	ids := map[string]string{}
	for i := range 5 {
		ids[uuid.NewString()] = fmt.Sprintf("held %d", i)
	}
	b.publishMany(t, ids)
	run(t, b.consumer)
	b.events.wait(t, "the breaker to open four times", func(evs []inbox.Event) bool {
		opens := 0
		for _, e := range evs {
			if e.Kind == inbox.EventBreaker && e.Breaker == inbox.BreakerOpen {
				opens++
			}
		}
		return opens >= 4
	})
	mu.Lock()
	failing = false
	mu.Unlock()
	b.events.wait(t, "all applied", func(evs []inbox.Event) bool { return allApplied(evs, keysOf(ids)) })
	mu.Lock()
	defer mu.Unlock()
	if len(redelivered) > 0 {
		t.Errorf("%d deliveries were returned to the queue during pauses and charged a delivery", len(redelivered))
	}
}
