package inbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxrelay/outboxrelay/internal/defaults"
	"github.com/outboxrelay/outboxrelay/internal/redact"
)

// DB is what the consumer needs of the database; *pgxpool.Pool satisfies
// it.
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// DefaultRetryDelays are the waits before attempts 2, 3, 4 and 5. Attempts
// beyond the list reuse its last delay.
var DefaultRetryDelays = []time.Duration{time.Second, 10 * time.Second, time.Minute, 10 * time.Minute}

// Config configures a Consumer. Zero values take the documented defaults.
type Config struct {
	// Queue is the queue to consume (required). Its retry queues are
	// "<Queue>.retry.<delay>" and its dead-letter queue "<Queue>.dead".
	Queue string
	// Name is the consumer name, the inbox table's consumer column
	// (required, at most 255 bytes: it travels in dead-letter headers).
	// Consumers with different names each apply every message once;
	// instances sharing a name share the work.
	Name string
	// DB reaches the database holding the inbox table (required).
	DB DB
	// Schema holds the inbox table (the relay's `schema` setting), taken
	// as written (case matters); empty: the first schema of the
	// connection's search_path that has one.
	Schema string
	// AMQPURLs is the broker failover list, tried in turn (required):
	// amqp:// or amqps:// URLs, checked by New. Reserved characters in a
	// user name or password must be percent-encoded. Logs and errors name
	// a broker by host or by index in this list, never with its password.
	AMQPURLs []string
	// Handler applies a message (required).
	Handler Handler

	// Concurrency is the number of messages handled at once (default 1).
	// Each handler holds one database connection while it runs.
	Concurrency int
	// Prefetch is the broker's limit of unacked messages on the channel
	// (default 2*Concurrency).
	Prefetch int
	// MaxAttempts is the number of attempts before a message that keeps
	// failing is dead-lettered (default 5).
	MaxAttempts int
	// RetryDelays are the waits before attempts 2, 3, ... (default
	// DefaultRetryDelays); attempts beyond the list reuse its last delay.
	// Each delay is a retry queue, so they are whole milliseconds.
	RetryDelays []time.Duration
	// HandlerTimeout cancels the handler's context (default 30s).
	HandlerTimeout time.Duration
	// ConfirmTimeout bounds the wait for the broker to confirm a retry or
	// dead-letter copy (default 30s).
	ConfirmTimeout time.Duration

	// BreakerThreshold is the number of consecutive transient failures
	// after which consuming pauses (default 10; negative disables the
	// breaker). BreakerCooldown is the pause (default 30s).
	BreakerThreshold int
	BreakerCooldown  time.Duration

	// RetentionWindow is how long inbox rows of this consumer are kept
	// (default 7 days; negative disables deletion). It must exceed the
	// longest time a copy of a message can still arrive, or a late copy is
	// applied again. RetentionInterval is how often old rows are deleted
	// (default 1h), RetentionBatch how many per statement (default 1000).
	RetentionWindow   time.Duration
	RetentionInterval time.Duration
	RetentionBatch    int

	// IsolationPeriod is how long the consumer takes messages one at a time
	// after losing its connection while subscribed (default 1m; negative
	// disables isolation). A delivery the client cannot read (a header
	// array over 8,192 elements, say) closes the connection before the
	// consumer sees it, and the broker returns every unacked message to
	// the queue, each charged one delivery. With prefetch 1 only the
	// culprit is in flight when it strikes again, so the queue's delivery
	// limit (see Topology.DeliveryLimit) dead-letters it alone, not the
	// innocent messages prefetched beside it. Prefetch goes back to normal
	// once a subscription has lasted IsolationPeriod without a loss. A
	// loss the broker announces as deliberate (CONNECTION_FORCED: a
	// shutdown or an operator closing the connection) does not isolate.
	IsolationPeriod time.Duration

	// ProbeInterval is how often, while subscribed, the consumer asks its
	// node whether it still reaches the queue (default 2s; negative
	// disables the probe). On a node cut off from its cluster's majority
	// (cluster_partition_handling = ignore) a quorum queue's deliveries
	// just stop: no basic.cancel, no channel or connection error, acks
	// accepted and silently dropped. The probe is a passive queue.declare
	// on a channel of its own; such a node answers it with zero consumers
	// (it cannot reach the queue's leader, which counts this one) after a
	// 250 ms internal timeout.
	//
	// ProbeTimeout is how long the probes may keep failing (an error, no
	// answer, or no consumer counted) before the node counts as making no
	// progress (default 6s). The consumer then leaves it for the next URL
	// in AMQPURLs, which it dials at once, and comes back to it only when
	// every other node failed to answer (the relay's rule). Unacked
	// deliveries on the node left are redelivered by the broker; those
	// already applied are recognised by the inbox table. With a single URL
	// there is nowhere to go: the consumer stays, keeps probing at
	// ProbeInterval, and Ready reports the node's trouble until a probe
	// passes.
	ProbeInterval, ProbeTimeout time.Duration

	// ReconnectMin and ReconnectMax shape the reconnect backoff (defaults
	// 100ms and 15s, full jitter).
	ReconnectMin, ReconnectMax time.Duration
	// Heartbeat is the AMQP heartbeat (default 10s).
	Heartbeat time.Duration
	// ConnectionName is shown in the RabbitMQ management UI.
	ConnectionName string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; nil registers nowhere.
	Registerer prometheus.Registerer
	// TracerProvider makes a process span per delivery, continuing the
	// trace in its headers, and the handler's context carries it; nil is
	// the global provider as it is when New is called, a no-op unless the
	// program installed one.
	TracerProvider trace.TracerProvider
	// Propagator reads the trace context from the message headers; nil is
	// W3C trace context (traceparent, tracestate), what the relay writes.
	Propagator propagation.TextMapPropagator
	// OnEvent, if set, is called for every outcome and state change (see
	// Event). It runs on the consumer's goroutines and must be quick. Meant
	// for tests, tracing and custom logging.
	OnEvent func(Event)

	// hooks are fault-injection points for tests; nil in production.
	hooks *testHooks
}

// testHooks are called at the interesting points of a delivery's life.
type testHooks struct {
	// afterCommit runs after the transaction committed, before the ack.
	afterCommit func(Message)
}

func (c *Config) setDefaults() {
	defaults.Set(&c.Concurrency, 1)
	defaults.Set(&c.Prefetch, 2*c.Concurrency)
	defaults.Set(&c.MaxAttempts, 5)
	defaults.Set(&c.BreakerThreshold, 10)
	defaults.Set(&c.RetentionBatch, 1000)
	if len(c.RetryDelays) == 0 {
		c.RetryDelays = DefaultRetryDelays
	}
	c.RetryDelays = append([]time.Duration(nil), c.RetryDelays...) // the caller's slice stays theirs
	defaults.Set(&c.HandlerTimeout, 30*time.Second)
	defaults.Set(&c.ConfirmTimeout, 30*time.Second)
	defaults.Set(&c.BreakerCooldown, 30*time.Second)
	defaults.Set(&c.IsolationPeriod, time.Minute)
	defaults.Set(&c.RetentionWindow, 7*24*time.Hour)
	defaults.Set(&c.RetentionInterval, time.Hour)
	defaults.Set(&c.ProbeInterval, 2*time.Second)
	defaults.Set(&c.ProbeTimeout, 6*time.Second)
	defaults.Set(&c.ReconnectMin, 100*time.Millisecond)
	defaults.Set(&c.ReconnectMax, 15*time.Second)
	defaults.Set(&c.Heartbeat, 10*time.Second)
	if c.ConnectionName == "" {
		host, _ := os.Hostname()
		c.ConnectionName = fmt.Sprintf("outbox-inbox %s %s/%d", c.Name, host, os.Getpid())
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// maxQueueName is AMQP's limit on a queue name (a short string).
const maxQueueName = 255

// maxName bounds Config.Name, which every dead-letter copy carries: a
// huge one would leave no room in the frame for the message's headers.
const maxName = 255

func (c *Config) validate() error {
	switch {
	case c.Queue == "":
		return errors.New("inbox: Config.Queue is required")
	case len(c.Queue) > maxQueueName-len(".retry.")-12:
		return fmt.Errorf("inbox: Config.Queue is too long (%d bytes): its retry queue names would exceed %d", len(c.Queue), maxQueueName)
	case c.Name == "":
		return errors.New("inbox: Config.Name is required")
	case len(c.Name) > maxName:
		return fmt.Errorf("inbox: Config.Name is too long (%d bytes, at most %d)", len(c.Name), maxName)
	case c.DB == nil:
		return errors.New("inbox: Config.DB is required")
	case len(c.AMQPURLs) == 0:
		return errors.New("inbox: Config.AMQPURLs is empty")
	case c.Handler == nil:
		return errors.New("inbox: Config.Handler is required")
	case c.Concurrency < 0:
		return errors.New("inbox: Config.Concurrency must not be negative")
	case c.Prefetch < 0:
		return errors.New("inbox: Config.Prefetch must not be negative")
	case c.MaxAttempts < 0:
		return errors.New("inbox: Config.MaxAttempts must not be negative")
	case c.RetentionBatch < 0:
		return errors.New("inbox: Config.RetentionBatch must not be negative")
	case c.HandlerTimeout < 0, c.ConfirmTimeout < 0, c.BreakerCooldown < 0, c.RetentionInterval < 0,
		c.ReconnectMin < 0, c.Heartbeat < 0, c.ProbeTimeout < 0:
		return errors.New("inbox: durations in Config must not be negative (only BreakerThreshold, RetentionWindow, IsolationPeriod and ProbeInterval use negative to disable)")
	case c.ReconnectMax < c.ReconnectMin:
		return errors.New("inbox: Config.ReconnectMax is below ReconnectMin")
	}
	for i, a := range c.AMQPURLs {
		if err := checkAMQPURL(a); err != nil {
			return fmt.Errorf("inbox: Config.AMQPURLs[%d] %w", i, err)
		}
	}
	for i, d := range c.RetryDelays {
		if d < time.Millisecond || d%time.Millisecond != 0 {
			return fmt.Errorf("inbox: Config.RetryDelays[%d] = %s: must be a whole number of milliseconds, at least 1ms", i, d)
		}
	}
	return nil
}

// retryDelay is the wait after the given failed attempt (from 1).
func (c *Config) retryDelay(attempt int) time.Duration {
	i := min(max(attempt-1, 0), len(c.RetryDelays)-1)
	return c.RetryDelays[i]
}

// checkAMQPURL says what is wrong with an AMQP URL. It quotes the URL
// only through redact.Value, which masks a password in every form a
// malformed URL may carry it (a forgotten scheme makes "user:secret@host"
// parse as scheme "user"), and never passes on the parsers' own errors,
// which quote the input raw.
func checkAMQPURL(raw string) error {
	if raw == "" {
		return errors.New("is empty")
	}
	shown := redact.Value(raw)
	if strings.IndexFunc(raw, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return fmt.Errorf("%q contains white space or control characters", shown)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q is not a valid URL (percent-encode reserved characters in the user name and password)", shown)
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return fmt.Errorf("%q must start with amqp:// or amqps://", shown)
	}
	if _, err := amqp.ParseURI(raw); err != nil {
		return fmt.Errorf("%q is not a valid AMQP URL (check the port and the query parameters)", shown)
	}
	return nil
}
