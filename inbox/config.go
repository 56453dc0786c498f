package inbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
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
	// (required). Consumers with different names each apply every message
	// once; instances sharing a name share the work.
	Name string
	// DB reaches the database holding the inbox table (required).
	DB DB
	// AMQPURLs is the broker failover list, tried in turn (required).
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
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(d *int, v int) {
		if *d == 0 {
			*d = v
		}
	}
	defInt(&c.Concurrency, 1)
	defInt(&c.Prefetch, 2*c.Concurrency)
	defInt(&c.MaxAttempts, 5)
	defInt(&c.BreakerThreshold, 10)
	defInt(&c.RetentionBatch, 1000)
	if len(c.RetryDelays) == 0 {
		c.RetryDelays = DefaultRetryDelays
	}
	c.RetryDelays = append([]time.Duration(nil), c.RetryDelays...) // the caller's slice stays theirs
	def(&c.HandlerTimeout, 30*time.Second)
	def(&c.ConfirmTimeout, 30*time.Second)
	def(&c.BreakerCooldown, 30*time.Second)
	def(&c.RetentionWindow, 7*24*time.Hour)
	def(&c.RetentionInterval, time.Hour)
	def(&c.ReconnectMin, 100*time.Millisecond)
	def(&c.ReconnectMax, 15*time.Second)
	def(&c.Heartbeat, 10*time.Second)
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

func (c *Config) validate() error {
	switch {
	case c.Queue == "":
		return errors.New("inbox: Config.Queue is required")
	case len(c.Queue) > maxQueueName-len(".retry.")-12:
		return fmt.Errorf("inbox: Config.Queue is too long (%d bytes): its retry queue names would exceed %d", len(c.Queue), maxQueueName)
	case c.Name == "":
		return errors.New("inbox: Config.Name is required")
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
		c.ReconnectMin < 0, c.Heartbeat < 0:
		return errors.New("inbox: durations in Config must not be negative (only BreakerThreshold and RetentionWindow use negative to disable)")
	case c.ReconnectMax < c.ReconnectMin:
		return errors.New("inbox: Config.ReconnectMax is below ReconnectMin")
	}
	for i, a := range c.AMQPURLs {
		if a == "" {
			return fmt.Errorf("inbox: Config.AMQPURLs[%d] is empty", i)
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
