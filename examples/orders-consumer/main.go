// Command orders-consumer is a runnable example of the inbox: it declares
// the topology, then applies {"order_id":..,"total_cents":..} messages to
// the table orders_applied, each exactly once, however often the broker
// delivers it.
//
//	go run ./examples/orders-consumer \
//	    -database-url "$RELAY_DATABASE_URL" -amqp-url "$RELAY_AMQP_URL"
//
// Every flag can also be set through the environment variable named in its
// help. The database must have the inbox table (`relay migrate`).
//
// The consumer creates orders_applied if it is missing, which needs CREATE
// on the schema. Under a least-privilege role (docs/operations.md "Roles and grants"),
// run it once with -setup as the table's owner (it creates the table and
// exits), grant the consumer's role SELECT, INSERT on orders_applied, and
// run it as that role: an existing table is left alone.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/inbox"
)

const createTable = `
CREATE TABLE IF NOT EXISTS orders_applied (
    order_id    bigint PRIMARY KEY,
    total_cents bigint      NOT NULL,
    message_id  text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)`

const insertOrder = `INSERT INTO orders_applied (order_id, total_cents, message_id) VALUES ($1, $2, $3)`

type order struct {
	OrderID    *int64 `json:"order_id"`
	TotalCents *int64 `json:"total_cents"`
}

func main() {
	var level slog.LevelVar // set from -log-level in run
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: &level}))
	if err := run(log, &level); err != nil {
		log.Error("orders-consumer failed", "err", err)
		os.Exit(1)
	}
}

// options are the consumer's flags.
type options struct {
	dbURL, amqpURL, exchange, queue, binding, name, logLevel string
	setup                                                    bool
}

// parseFlags reads args, then takes each flag not given from the
// environment variable named in its help (the URLs also from RELAY_*).
// The environment is read after parsing, never into a flag's default:
// -help prints defaults, and a URL's default would print its password.
func parseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) (options, error) {
	var o options
	fromEnv := map[string][]string{}
	str := func(p *string, name, def, help string, env ...string) {
		fs.StringVar(p, name, def, help+" (env "+strings.Join(env, ", then ")+")")
		fromEnv[name] = env
	}
	str(&o.dbURL, "database-url", "", "PostgreSQL URL", "ORDERS_DATABASE_URL", "RELAY_DATABASE_URL")
	str(&o.amqpURL, "amqp-url", "", "RabbitMQ URL(s), comma-separated", "ORDERS_AMQP_URL", "RELAY_AMQP_URL")
	str(&o.exchange, "exchange", "orders", "exchange the relay publishes to", "ORDERS_EXCHANGE")
	str(&o.queue, "queue", "orders-applier", "queue to consume", "ORDERS_QUEUE")
	str(&o.binding, "binding", "order.created", "binding keys, comma-separated", "ORDERS_BINDING")
	str(&o.name, "name", "orders-applier", "consumer name in the inbox table", "ORDERS_CONSUMER")
	str(&o.logLevel, "log-level", "info", "debug, info, warn or error; debug also logs each duplicate the inbox acks unhandled", "ORDERS_LOG_LEVEL")
	fs.BoolVar(&o.setup, "setup", false, "create the table orders_applied if missing, then exit (run as the table's owner)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for name, env := range fromEnv {
		if given[name] {
			continue
		}
		for _, e := range env {
			if v := getenv(e); v != "" {
				_ = fs.Set(name, v)
				break
			}
		}
	}
	return o, nil
}

func run(log *slog.Logger, level *slog.LevelVar) error {
	o, err := parseFlags(flag.CommandLine, os.Args[1:], os.Getenv)
	if err != nil {
		return err
	}
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	if o.dbURL == "" || (o.amqpURL == "" && !o.setup) {
		return errors.New("-database-url and -amqp-url are required")
	}
	urls := strings.Split(o.amqpURL, ",")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	pool, err := pgxpool.New(ctx, o.dbURL)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer pool.Close()
	if err := ensureTable(ctx, pool); err != nil {
		return err
	}
	if o.setup {
		log.Info("table orders_applied ready")
		return nil
	}
	if err := declare(ctx, urls[0], inbox.Topology{Exchange: o.exchange, Queue: o.queue, BindingKeys: strings.Split(o.binding, ",")}); err != nil {
		return err
	}
	log.Info("topology declared", "exchange", o.exchange, "queue", o.queue, "binding", o.binding)

	c, err := inbox.New(inbox.Config{
		Queue:       o.queue,
		Name:        o.name,
		DB:          pool,
		AMQPURLs:    urls,
		Concurrency: 4,
		Handler:     applyOrder(log),
		Logger:      log,
	})
	if err != nil {
		return err
	}
	return c.Run(ctx)
}

// applyOrder writes the order through the inbox's transaction.
func applyOrder(log *slog.Logger) inbox.Handler {
	return func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
		var o order
		if err := json.Unmarshal(m.Body, &o); err != nil {
			return inbox.Permanent(fmt.Errorf("decode order: %w", err))
		}
		if o.OrderID == nil || o.TotalCents == nil {
			return inbox.Permanent(errors.New("order_id and total_cents are required"))
		}
		_, err := tx.Exec(ctx, insertOrder, *o.OrderID, *o.TotalCents, m.ID)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			// Another message (another message id) already applied this
			// order: a business conflict, not something a retry fixes.
			return inbox.Permanent(fmt.Errorf("order %d already applied by another message", *o.OrderID))
		}
		if err != nil {
			return err
		}
		log.Info("order applied", "order_id", *o.OrderID, "total_cents", *o.TotalCents,
			"message_id", m.ID, "attempt", m.Attempt)
		return nil
	}
}

func declare(ctx context.Context, url string, t inbox.Topology) error {
	conn, err := amqp.Dial(url)
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	return inbox.DeclareTopology(ctx, ch, t)
}

// ensureTable creates orders_applied unless it exists. It looks first:
// CREATE TABLE IF NOT EXISTS needs CREATE on the schema even when the table
// is there, and a least-privilege consumer role has no such right.
func ensureTable(ctx context.Context, pool *pgxpool.Pool) error {
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('orders_applied') IS NOT NULL`).Scan(&exists); err != nil {
		return fmt.Errorf("look for orders_applied: %w", err)
	}
	if exists {
		return nil
	}
	if _, err := pool.Exec(ctx, createTable); err != nil {
		return fmt.Errorf("create orders_applied: %w", err)
	}
	return nil
}
