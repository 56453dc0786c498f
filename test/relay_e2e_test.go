package test

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// Two relay processes drain 10,000 rows together; every row
// arrives once, each relay published part of them, and together they marked
// each row once.
func TestTwoRelaysPublishEveryRowExactlyOnce(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, true)
	ctx := context.Background()

	relayEnv := []string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + env.AMQPURL, "RELAY_BATCH_SIZE=200"}
	a := startRelay(t, relayEnv...)
	b := startRelay(t, relayEnv...)
	// Both are connected before the first row commits, so both are woken
	// by every insert notification.
	testenv.Eventually(t, time.Minute, "both relays ready", func() (bool, error) {
		return status(a, "/readyz") == 200 && status(b, "/readyz") == 200, nil
	})

	const n = 10_000
	msgs := make([]outbox.Message, 0, 1000)
	var ids []string
	for len(ids) < n {
		msgs = msgs[:0]
		for range 1000 {
			msgs = append(msgs, outbox.Message{RoutingKey: queue, Payload: []byte(fmt.Sprintf(`{"i":%d}`, len(ids)+len(msgs)))})
		}
		got, err := outbox.Enqueue(ctx, pool, msgs...)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got...)
	}

	testenv.WaitPublished(t, pool, 2*time.Minute)
	got := testenv.Consume(t, ch, queue, n, time.Minute)
	seen := make(map[string]int, n)
	for _, d := range got {
		seen[d.MessageId]++
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Fatalf("message %s arrived %d times", id, seen[id])
		}
	}
	// Every confirmed message is in the queue by now; nothing beyond the
	// n distinct ones may be left.
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	if err != nil {
		t.Fatal(err)
	}
	if q.Messages != 0 {
		t.Fatalf("%d extra messages in the queue: duplicates", q.Messages)
	}
	// Each relay published part of the rows, and between them they marked
	// every row exactly once.
	published := func(p *testenv.RelayProc) int {
		v, err := strconv.Atoi(p.Metric("outboxrelay_relay_published_total"))
		if err != nil {
			t.Fatalf("outboxrelay_relay_published_total: %v", err)
		}
		return v
	}
	pa, pb := published(a), published(b)
	if pa == 0 || pb == 0 || pa+pb != n {
		t.Errorf("relay a published %d rows, relay b %d; want both above 0 and %d in all", pa, pb, n)
	}
}

// A bad configuration stops the binary with one clear line.
func TestBadConfigurationExitsWithOneClearLine(t *testing.T) {
	t.Parallel()
	good := []string{"RELAY_DATABASE_URL=postgres://u:pw-in-config@127.0.0.1:1/db", "RELAY_AMQP_URL=amqp://127.0.0.1:1/"}
	cases := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"non-numeric batch size", append(good, "RELAY_BATCH_SIZE=lots"), nil, `batch_size (from RELAY_BATCH_SIZE): must be a whole number, got "lots"`},
		{"batch size flag out of range", good, []string{"--batch-size", "0"}, "batch_size (from --batch-size): must be between 1 and 100000"},
		{"missing database url", good[1:], nil, "database_url: is required"},
		{"missing amqp url", good[:1], nil, "amqp_url: is required"},
		{"bad duration", append(good, "RELAY_POLL_INTERVAL=soon"), nil, "poll_interval (from RELAY_POLL_INTERVAL): must be a duration"},
		{"bad log level", append(good, "RELAY_LOG_LEVEL=loud"), nil, "log_level (from RELAY_LOG_LEVEL): must be one of"},
		{"not a postgres url", []string{"RELAY_DATABASE_URL=mysql://u:pw-in-config@h/db", "RELAY_AMQP_URL=amqp://h/"}, nil, "database_url (from RELAY_DATABASE_URL): must be a URL with a host (postgres:// or postgresql://)"},
		{"unknown flag", good, []string{"--bogus"}, "unknown flag: --bogus"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, code := relayCmd(t, tc.env, append([]string{"run"}, tc.args...)...)
			if code == 0 {
				t.Fatalf("exit code 0, want non-zero; output:\n%s", out)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 1 && tc.name != "unknown flag" {
				t.Errorf("want one line, got %d:\n%s", len(lines), out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("output %q does not contain %q", out, tc.want)
			}
			if strings.Contains(out, "pw-in-config") {
				t.Errorf("output reveals the password: %s", out)
			}
		})
	}
}

// The database password never appears in the logs, whether
// the relay runs fine or fails to log in.
func TestPasswordNeverLogged(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	u, _ := url.Parse(dsn)
	password, _ := u.User.Password()

	// A relay that works, with a row to publish.
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, false)
	pool := testenv.Pool(t, dsn)
	if _, err := outbox.Enqueue(context.Background(), pool, outbox.Message{RoutingKey: queue, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	ok := startRelay(t, "RELAY_DATABASE_URL="+dsn, "RELAY_AMQP_URL="+env.AMQPURL, "RELAY_LOG_LEVEL=debug")
	testenv.Consume(t, ch, queue, 1, 30*time.Second)

	// A relay whose login fails: it logs errors, which must not quote the URL's password.
	wrong := *u
	wrong.User = url.UserPassword(u.User.Username(), "Wr0ng-Secret-"+testenv.Name("pw"))
	bad := startRelay(t, "RELAY_DATABASE_URL="+wrong.String(), "RELAY_AMQP_URL="+env.AMQPURL, "RELAY_LOG_LEVEL=debug")
	testenv.Eventually(t, 30*time.Second, "the failing relay to log a database error", func() (bool, error) {
		return strings.Contains(bad.Logs(), "password authentication failed"), nil
	})
	// Stop both so their logs are complete.
	for _, p := range []*testenv.RelayProc{ok, bad} {
		if err := p.Stop(); err != nil {
			t.Errorf("relay: %v", err)
		}
	}
	wrongPW, _ := wrong.User.Password()
	for _, secret := range []string{password, wrongPW} {
		for _, p := range []*testenv.RelayProc{ok, bad} {
			if strings.Contains(p.Logs(), secret) {
				t.Errorf("a log line reveals a password:\n%s", p.Logs())
			}
		}
	}
}

// Migrate twice is a no-op, and concurrent migrates are safe.
func TestMigrateIsIdempotentAndConcurrencySafe(t *testing.T) {
	t.Parallel()
	dsn := testenv.NewSchema(t, false)
	var wg sync.WaitGroup
	outs := make([]string, 3)
	codes := make([]int, 3)
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], codes[i] = relayCmd(t, []string{"RELAY_DATABASE_URL=" + dsn}, "migrate")
		}()
	}
	wg.Wait()
	applied := 0
	for i := range outs {
		if codes[i] != 0 {
			t.Fatalf("concurrent migrate %d exited %d:\n%s", i, codes[i], outs[i])
		}
		if strings.Contains(outs[i], "migrate: applied") {
			applied++
		}
	}
	if applied != 1 {
		t.Errorf("%d of 3 concurrent migrates applied migrations, want exactly 1:\n%s", applied, strings.Join(outs, ""))
	}
	out, code := relayCmd(t, []string{"RELAY_DATABASE_URL=" + dsn}, "migrate")
	if code != 0 || !strings.Contains(out, "migrate: nothing to apply") {
		t.Fatalf("second migrate: exit %d, output %q; want a no-op", code, out)
	}
}

// /readyz fails while the broker is unreachable and passes once
// it is; /healthz answers throughout; SIGTERM exits 0 (checked at cleanup).
func TestReadyzFollowsTheBroker(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	u, _ := url.Parse(env.AMQPURL)
	proxy := testenv.NewProxy(t, u.Host, false)
	u.Host = proxy.Addr()
	p := startRelay(t, "RELAY_DATABASE_URL="+dsn, "RELAY_AMQP_URL="+u.String(), "RELAY_RECONNECT_MIN=10ms", "RELAY_RECONNECT_MAX=50ms")
	testenv.Eventually(t, 30*time.Second, "healthz to answer", func() (bool, error) {
		return status(p, "/healthz") == 200, nil
	})
	if s := status(p, "/readyz"); s != 503 {
		t.Fatalf("readyz with the broker unreachable = %d, want 503", s)
	}
	proxy.SetUp(true)
	testenv.Eventually(t, 30*time.Second, "readyz to pass once the broker is reachable", func() (bool, error) {
		return status(p, "/readyz") == 200, nil
	})
	metrics := get(t, p.URL()+"/metrics")
	if !strings.Contains(metrics, "outboxrelay_relay_broker_connected 1") {
		t.Errorf("metrics do not show the broker connected:\n%s", metrics)
	}
	if strings.Contains(metrics, "outbox-secret") {
		t.Errorf("metrics reveal a password")
	}
}
