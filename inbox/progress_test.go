package inbox_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// probeFast makes the progress probe judge a node within about a second;
// the heartbeat is longer than waitLimit, so only the probe can notice a
// node that keeps the connection but answers nothing.
func probeFast(c *inbox.Config) {
	c.ProbeInterval = 100 * time.Millisecond
	c.ProbeTimeout = time.Second
	c.Heartbeat = time.Minute
}

// A node that keeps the connection open but stops answering (the proxy
// swallows every byte, as a partition does) is left for the next URL, and
// what was published meanwhile is applied there.
func TestConsumerLeavesNodeThatStopsAnswering(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	silent := testenv.NewProxy(t, testenv.BrokerAddr(t, env.AMQPURL), true)
	b := setup(t, nil, setupOpts{proxy: silent, cfg: func(c *inbox.Config) {
		probeFast(c)
		c.AMQPURLs = append(c.AMQPURLs, env.AMQPURL) // the silent node first, then a healthy one
	}})
	t.Cleanup(silent.Cut) // first: the consumer's close would wait for a silent node
	first := b.applyOne(t, "before")
	silent.Hold(true)
	second := b.applyOne(t, "while the first node is silent")
	if got := b.metric(t, "outboxrelay_inbox_broker_abandoned_total"); got != 1 {
		t.Errorf("broker_abandoned_total = %v, want 1", got)
	}
	if got := b.metric(t, "outboxrelay_inbox_isolated"); got != 0 {
		t.Errorf("leaving a node on purpose switched to prefetch 1 (isolated = %v)", got)
	}
	for _, id := range []string{first, second} {
		if n := b.appliedCount(t, id); n != 1 {
			t.Errorf("message %s applied %d times, want once", id, n)
		}
	}
}

// With a single URL there is nowhere to go: the consumer stays, counts the
// stall once, and Ready says why it is not consuming.
func TestSingleURLConsumerStaysAndReportsStall(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	silent := testenv.NewProxy(t, testenv.BrokerAddr(t, env.AMQPURL), true)
	b := setup(t, nil, setupOpts{proxy: silent, cfg: probeFast})
	t.Cleanup(silent.Cut) // first: the consumer's close would wait for a silent node
	b.applyOne(t, "before")
	silent.Hold(true)
	testenv.Eventually(t, waitLimit, "Ready to report the stalled node", func() (bool, error) {
		err := b.consumer.Ready()
		return err != nil && errors.Is(err, inbox.ErrNotConsuming) && strings.Contains(err.Error(), "cannot reach the queue"), nil
	})
	if got := b.metric(t, "outboxrelay_inbox_broker_stalls_total"); got != 1 {
		t.Errorf("broker_stalls_total = %v, want 1", got)
	}
	if got := b.metric(t, "outboxrelay_inbox_broker_abandoned_total"); got != 0 {
		t.Errorf("broker_abandoned_total = %v with a single URL, want 0", got)
	}
	if got := silent.Accepted(); got != 1 {
		t.Errorf("the consumer opened %d connections, want 1 (it has nowhere to go)", got)
	}
}

// applyOne publishes a message with that body and waits until it is
// applied; it returns its id.
func (b *testBundle) applyOne(t *testing.T, body string) string {
	t.Helper()
	id := uuid.NewString()
	b.publish(t, "", b.queue, id, body)
	b.events.wait(t, "the message published "+body+" applied", func(evs []inbox.Event) bool {
		return count(evs, inbox.EventApplied, id) == 1
	})
	return id
}
