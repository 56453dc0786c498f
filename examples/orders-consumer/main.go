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

// envFlag defines a string flag whose default comes from an environment
// variable.
func envFlag(name, env, def, help string) *string {
	if v := os.Getenv(env); v != "" {
		def = v
	}
	return flag.String(name, def, help+" (env "+env+")")
}

func run(log *slog.Logger, level *slog.LevelVar) error {
	var (
		dbURL    = envFlag("database-url", "ORDERS_DATABASE_URL", os.Getenv("RELAY_DATABASE_URL"), "PostgreSQL URL; RELAY_DATABASE_URL is used if unset")
		amqpURL  = envFlag("amqp-url", "ORDERS_AMQP_URL", os.Getenv("RELAY_AMQP_URL"), "RabbitMQ URL(s), comma-separated; RELAY_AMQP_URL is used if unset")
		exchange = envFlag("exchange", "ORDERS_EXCHANGE", "orders", "exchange the relay publishes to")
		queue    = envFlag("queue", "ORDERS_QUEUE", "orders-applier", "queue to consume")
		binding  = envFlag("binding", "ORDERS_BINDING", "order.created", "binding keys, comma-separated")
		name     = envFlag("name", "ORDERS_CONSUMER", "orders-applier", "consumer name in the inbox table")
		logLevel = envFlag("log-level", "ORDERS_LOG_LEVEL", "info", "debug, info, warn or error; debug also logs each duplicate the inbox acks unhandled")
		setup    = flag.Bool("setup", false, "create the table orders_applied if missing, then exit (run as the table's owner)")
	)
	flag.Parse()
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	if *dbURL == "" || (*amqpURL == "" && !*setup) {
		return errors.New("-database-url and -amqp-url are required")
	}
	urls := strings.Split(*amqpURL, ",")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	pool, err := pgxpool.New(ctx, *dbURL)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer pool.Close()
	if err := ensureTable(ctx, pool); err != nil {
		return err
	}
	if *setup {
		log.Info("table orders_applied ready")
		return nil
	}
	if err := declare(ctx, urls[0], inbox.Topology{Exchange: *exchange, Queue: *queue, BindingKeys: strings.Split(*binding, ",")}); err != nil {
		return err
	}
	log.Info("topology declared", "exchange", *exchange, "queue", *queue, "binding", *binding)

	c, err := inbox.New(inbox.Config{
		Queue:       *queue,
		Name:        *name,
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
