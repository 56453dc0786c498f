package inbox

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
)

func validConfig() Config {
	return Config{
		Queue:    "orders",
		Name:     "billing",
		DB:       fakeDB{},
		AMQPURLs: []string{"amqp://localhost/"},
		Handler:  func(context.Context, pgx.Tx, Message) error { return nil },
	}
}

type fakeDB struct{ DB }

func TestConfigValidateNamesTheBadField(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		change func(*Config)
		want   string // "" = valid
	}{
		{"valid", func(*Config) {}, ""},
		{"no queue", func(c *Config) { c.Queue = "" }, "Config.Queue is required"},
		{"long queue", func(c *Config) { c.Queue = strings.Repeat("q", 250) }, "Config.Queue is too long"},
		{"no name", func(c *Config) { c.Name = "" }, "Config.Name is required"},
		{"no db", func(c *Config) { c.DB = nil }, "Config.DB is required"},
		{"no urls", func(c *Config) { c.AMQPURLs = nil }, "Config.AMQPURLs is empty"},
		{"empty url", func(c *Config) { c.AMQPURLs = []string{"amqp://a/", ""} }, "Config.AMQPURLs[1] is empty"},
		{"no handler", func(c *Config) { c.Handler = nil }, "Config.Handler is required"},
		{"negative concurrency", func(c *Config) { c.Concurrency = -1 }, "Config.Concurrency"},
		{"negative prefetch", func(c *Config) { c.Prefetch = -1 }, "Config.Prefetch"},
		{"negative attempts", func(c *Config) { c.MaxAttempts = -2 }, "Config.MaxAttempts"},
		{"sub-millisecond delay", func(c *Config) { c.RetryDelays = []time.Duration{time.Second, 500 * time.Microsecond} }, "Config.RetryDelays[1]"},
		{"fractional delay", func(c *Config) { c.RetryDelays = []time.Duration{1500 * time.Microsecond} }, "Config.RetryDelays[0]"},
		{"reconnect bounds", func(c *Config) { c.ReconnectMin, c.ReconnectMax = time.Second, time.Millisecond }, "Config.ReconnectMax"},
		{"breaker disabled", func(c *Config) { c.BreakerThreshold = -1 }, ""},
		{"retention disabled", func(c *Config) { c.RetentionWindow = -1 }, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := validConfig()
			tc.change(&c)
			c.setDefaults()
			err := c.validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("validate() = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("validate() = %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := validConfig()
	c.Concurrency = 3
	c.setDefaults()
	if c.Prefetch != 6 || c.MaxAttempts != 5 || c.BreakerThreshold != 10 || c.RetentionWindow != 7*24*time.Hour {
		t.Errorf("defaults: prefetch %d, attempts %d, breaker %d, retention %s", c.Prefetch, c.MaxAttempts, c.BreakerThreshold, c.RetentionWindow)
	}
	for attempt, want := range map[int]time.Duration{1: time.Second, 2: 10 * time.Second, 4: 10 * time.Minute, 9: 10 * time.Minute} {
		if got := c.retryDelay(attempt); got != want {
			t.Errorf("retryDelay(%d) = %s, want %s", attempt, got, want)
		}
	}
}

func TestBreakerStateMachine(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		steps string // f = failure, s = success, h = cooldown over, a = admit
		want  BreakerState
	}{
		{"failures below threshold", "ff", BreakerClosed},
		{"threshold opens", "fff", BreakerOpen},
		{"a success resets the count", "ffsff", BreakerClosed},
		{"late results while open change nothing", "fffsf", BreakerOpen},
		{"cooldown goes half-open", "fffh", BreakerHalfOpen},
		{"trial success closes", "fffhas", BreakerClosed},
		{"trial failure reopens", "fffhaf", BreakerOpen},
		{"closed again counts from zero", "fffhasff", BreakerClosed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBreaker(3, nil)
			for _, s := range tc.steps {
				switch s {
				case 'f':
					b.record(false)
				case 's':
					b.record(true)
				case 'h':
					b.halfOpen()
				case 'a':
					if ok, _, _ := b.admit(); !ok {
						t.Fatalf("admit refused in state %v", b.state)
					}
				}
			}
			if st, _ := b.snapshot(); st != tc.want {
				t.Errorf("state %v, want %v", st, tc.want)
			}
		})
	}
}

func TestBreakerAdmitsOneTrialAtATime(t *testing.T) {
	t.Parallel()
	b := newBreaker(1, nil)
	if ok, _, _ := b.admit(); !ok {
		t.Fatal("closed breaker refused")
	}
	b.record(false)
	if ok, st, _ := b.admit(); ok || st != BreakerOpen {
		t.Fatalf("open breaker admitted (state %v)", st)
	}
	b.halfOpen()
	if ok, _, _ := b.admit(); !ok {
		t.Fatal("half-open breaker refused the trial")
	}
	ok, _, changed := b.admit()
	if ok {
		t.Fatal("half-open breaker admitted a second message during the trial")
	}
	b.release() // the trial's subscription ended unhandled
	select {
	case <-changed:
	default:
		t.Fatal("release did not wake the dispatcher")
	}
	if ok, _, _ := b.admit(); !ok {
		t.Fatal("released trial was not given to the next message")
	}
	if disabled := newBreaker(0, nil); true {
		for range 100 {
			disabled.record(false)
		}
		if st, _ := disabled.snapshot(); st != BreakerClosed {
			t.Errorf("a disabled breaker opened")
		}
	}
}

func TestAttemptsOf(t *testing.T) {
	t.Parallel()
	cases := []struct {
		v    any
		want int
	}{
		{nil, 0}, {int8(2), 2}, {int16(3), 3}, {int32(4), 4}, {int64(5), 5}, {uint8(6), 6},
		{float64(7), 7}, {" 8 ", 8}, {"x", 0}, {int64(-1), 0}, {int64(1 << 40), 0}, {true, 0},
	}
	for _, tc := range cases {
		h := amqp.Table{}
		if tc.v != nil {
			h[HeaderAttempts] = tc.v
		}
		if got := attemptsOf(h); got != tc.want {
			t.Errorf("attemptsOf(%#v) = %d, want %d", tc.v, got, tc.want)
		}
	}
}

func FuzzAttemptsHeader(f *testing.F) {
	f.Add("3", int64(3), 3.0)
	f.Add("-1", int64(-1), -1.5)
	f.Add("99999999999999999999", int64(1<<62), 1e300)
	f.Fuzz(func(t *testing.T, s string, i int64, fl float64) {
		for _, v := range []any{s, i, fl, int32(i), float32(fl)} {
			n := attemptsOf(amqp.Table{HeaderAttempts: v})
			if n < 0 || n > maxAttemptsHeader {
				t.Fatalf("attemptsOf(%#v) = %d, out of range", v, n)
			}
			// Trusted only from a retry queue; from anywhere else the
			// header is a publisher's and the message is on its first
			// attempt, whatever it says.
			back := fromRetry("x", amqp.Table{HeaderAttempts: v})
			if m := newMessage(back, fromRetryQueue(back, "q")); m.Attempt != n+1 {
				t.Fatalf("Attempt %d for %d attempts", m.Attempt, n)
			}
			forged := amqp.Delivery{MessageId: "x", RoutingKey: "q", Headers: amqp.Table{HeaderAttempts: v, HeaderOriginalRoutingKey: s}}
			m := newMessage(forged, fromRetryQueue(forged, "q"))
			if m.Attempt != 1 || m.RoutingKey != "q" {
				t.Fatalf("forged %#v: attempt %d, routing key %q; want 1 and q", v, m.Attempt, m.RoutingKey)
			}
			if _, ok := m.Headers[HeaderAttempts]; ok {
				t.Fatalf("forged %s shown to the handler", HeaderAttempts)
			}
		}
	})
}

func TestCopyKeepsPropertiesAndOriginalRoute(t *testing.T) {
	t.Parallel()
	d := amqp.Delivery{
		MessageId: "m1", Exchange: "orders", RoutingKey: "order.created", ContentType: "application/json",
		CorrelationId: "c", Type: "t", AppId: "a", UserId: "someone", Body: []byte("{}"),
		Headers: amqp.Table{"traceparent": "00-x", "x-death": []any{}, "x-delivery-count": int64(2)},
	}
	p := copyOf(d, newMessage(d, false), amqp.Table{HeaderAttempts: int64(1)})
	if p.MessageId != "m1" || p.DeliveryMode != amqp.Persistent || p.CorrelationId != "c" || p.UserId != "" {
		t.Errorf("properties not kept: %+v", p)
	}
	if p.Headers["traceparent"] != "00-x" || p.Headers[HeaderOriginalRoutingKey] != "order.created" || p.Headers[HeaderOriginalExchange] != "orders" {
		t.Errorf("headers: %v", p.Headers)
	}
	if _, ok := p.Headers["x-death"]; ok {
		t.Errorf("broker header x-death copied")
	}
	// A copy of a copy keeps the first route, not the retry queue's.
	d2 := fromRetry("m1", p.Headers)
	m := newMessage(d2, true)
	if m.Exchange != "orders" || m.RoutingKey != "order.created" || m.Attempt != 2 {
		t.Errorf("message after a retry: %+v", m)
	}
}

func TestQueueNames(t *testing.T) {
	t.Parallel()
	cases := map[time.Duration]string{
		20 * time.Millisecond:   "q.retry.20ms",
		1500 * time.Millisecond: "q.retry.1500ms",
		time.Second:             "q.retry.1s",
		90 * time.Second:        "q.retry.90s",
		10 * time.Minute:        "q.retry.10m",
		2 * time.Hour:           "q.retry.2h",
	}
	for d, want := range cases {
		if got := RetryQueue("q", d); got != want {
			t.Errorf("RetryQueue(q, %s) = %q, want %q", d, got, want)
		}
	}
	if DeadQueue("q") != "q.dead" {
		t.Errorf("DeadQueue = %q", DeadQueue("q"))
	}
	long := "x" + strings.Repeat("é", 600)
	if got := truncate(long, maxErrorHeader); len(got) > maxErrorHeader+len("…") || !strings.HasSuffix(got, "…") {
		t.Errorf("truncate: %d bytes", len(got))
	}
}

// fromRetry is a delivery of message id coming back from q's 20ms retry
// queue, as the broker dead-letters it: default exchange, routing key q,
// x-death first naming the retry queue.
func fromRetry(id string, h amqp.Table) amqp.Delivery {
	h2 := amqp.Table{"x-death": []any{amqp.Table{"queue": "q.retry.20ms", "reason": "expired", "count": int64(1)}}}
	for k, v := range h {
		h2[k] = v
	}
	return amqp.Delivery{MessageId: id, Exchange: "", RoutingKey: "q", Headers: h2}
}

func TestFromRetryQueue(t *testing.T) {
	t.Parallel()
	death := func(queue, reason string) []any {
		return []any{amqp.Table{"queue": queue, "reason": reason, "count": int64(1)}}
	}
	cases := []struct {
		name     string
		exchange string
		key      string
		xDeath   any
		want     bool
	}{
		{"back from a retry queue", "", "q", death("q.retry.20ms", "expired"), true},
		{"back from a retry queue of an old delay", "", "q", death("q.retry.7m", "expired"), true},
		{"no x-death", "", "q", nil, false},
		{"published to the main queue through an exchange", "orders", "q", death("q.retry.20ms", "expired"), false},
		{"another routing key", "", "other", death("q.retry.20ms", "expired"), false},
		{"another queue's retry queue", "", "q", death("p.retry.20ms", "expired"), false},
		{"rejected, not expired", "", "q", death("q.retry.20ms", "rejected"), false},
		{"the dead-letter queue", "", "q", death("q.dead", "expired"), false},
		{"most recent death elsewhere", "", "q", append(death("other", "expired"), death("q.retry.20ms", "expired")...), false},
		{"malformed x-death", "", "q", "q.retry.20ms", false},
		{"malformed entry", "", "q", []any{"q.retry.20ms"}, false},
	}
	for _, tc := range cases {
		h := amqp.Table{HeaderAttempts: int64(999)}
		if tc.xDeath != nil {
			h["x-death"] = tc.xDeath
		}
		d := amqp.Delivery{MessageId: "m", Exchange: tc.exchange, RoutingKey: tc.key, Headers: h}
		if got := fromRetryQueue(d, "q"); got != tc.want {
			t.Errorf("%s: fromRetryQueue = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestIsRetryQueue(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]bool{
		"q.retry.20ms": true, "q.retry.1s": true, "q.retry.10m": true, "q.retry.2h": true, "q.retry.1500ms": true,
		"q.retry.": false, "q.retry.s": false, "q.retry.0s": false, "q.retry.01s": false, "q.retry.-1s": false,
		"q.retry.1d": false, "q.retry.1sx": false, "q.dead": false, "p.retry.1s": false, "q.retry.1s.retry.1s": false,
	} {
		if got := isRetryQueue("q", name); got != want {
			t.Errorf("isRetryQueue(q, %q) = %v, want %v", name, got, want)
		}
	}
	for _, d := range []time.Duration{time.Millisecond, 1500 * time.Millisecond, time.Second, 90 * time.Second, time.Hour} {
		if !isRetryQueue("q", RetryQueue("q", d)) {
			t.Errorf("RetryQueue(q, %s) not recognised", d)
		}
	}
}

func TestCheckAMQPURLNeverEchoesIt(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t"
	cases := []struct {
		url  string
		want string // "" = valid
	}{
		{"amqp://app:" + secret + "@broker:5672/vhost", ""},
		{"amqps://app:" + secret + "@broker/", ""},
		{"", "is empty"},
		{"app:" + secret + "@broker:5672", "must start with amqp://"},
		{"http://app:" + secret + "@broker/", "must start with amqp://"},
		{"amqp://app:" + secret + "@bro ker/", "white space"},
		{"amqp://app:" + secret + "\n@broker/", "white space or control characters"},
		{"amqp://app:" + secret + "\x00@broker/", "white space or control characters"},
		{"amqp://app:" + secret + "%zz@broker/", "not a valid URL"},
		{"amqp://app:" + secret + "/x@broker/", "not a valid URL"},
		{"amqp://app:" + secret + "@broker:99999999999/", "not a valid AMQP URL"},
		{"amqp://app:" + secret + "@broker/?heartbeat=often", "not a valid AMQP URL"},
		{"amqp://app:" + secret + "/" + secret + "@broker:99999999999/", "not a valid URL"},
	}
	for _, tc := range cases {
		c := validConfig()
		c.AMQPURLs = []string{"amqp://ok/", tc.url}
		c.setDefaults()
		err := c.validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v, want valid", tc.url, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "AMQPURLs[1]")):
			t.Errorf("%q: %v, want an error naming AMQPURLs[1] and %q", tc.url, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("%q: the error echoes the password: %v", tc.url, err)
		}
	}
}
