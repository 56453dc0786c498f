package inbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// The handler's writes and the inbox row commit together, so the second
// copy of a message (here published twice, as a relay may after a crash)
// is recognised and changes nothing.
func Example_consumeThroughTheInbox() {
	ctx := context.Background()
	env := testenv.MustServices()
	pool, done := testenv.ExampleDatabase(ctx)
	defer done()
	_, _ = pool.Exec(ctx, `CREATE TABLE orders_applied (order_id int PRIMARY KEY, total_cents int NOT NULL)`)

	conn, err := amqp.Dial(env.AMQPURL)
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	ch, _ := conn.Channel()
	topo := inbox.Topology{Exchange: testenv.Name("orders"), Queue: testenv.Name("orders_applier"), BindingKeys: []string{"order.created"}}
	if err := inbox.DeclareTopology(ctx, ch, topo); err != nil {
		panic(err)
	}
	defer deleteTopology(env.AMQPURL, topo)

	outcomes := make(chan inbox.EventKind, 10)
	consumer, err := inbox.New(inbox.Config{
		Queue:    topo.Queue,
		Name:     "orders-applier",
		DB:       pool,
		AMQPURLs: []string{env.AMQPURL},
		Handler: func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
			var o struct {
				OrderID    int `json:"order_id"`
				TotalCents int `json:"total_cents"`
			}
			if err := json.Unmarshal(m.Body, &o); err != nil {
				return inbox.Permanent(err) // retrying will not fix bad JSON
			}
			_, err := tx.Exec(ctx, `INSERT INTO orders_applied VALUES ($1, $2)`, o.OrderID, o.TotalCents)
			return err
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnEvent: func(e inbox.Event) {
			if e.Kind == inbox.EventApplied || e.Kind == inbox.EventDuplicate {
				outcomes <- e.Kind
			}
		},
	})
	if err != nil {
		panic(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan error)
	go func() { stopped <- consumer.Run(runCtx) }()

	for range 2 {
		_ = ch.PublishWithContext(ctx, topo.Exchange, "order.created", false, false, amqp.Publishing{
			MessageId:    "0b7e0a52-8f5e-4a53-9d43-0c1b6f0e9f42",
			DeliveryMode: amqp.Persistent,
			ContentType:  "application/json",
			Body:         []byte(`{"order_id":42,"total_cents":1999}`),
		})
	}
	fmt.Println(<-outcomes)
	fmt.Println(<-outcomes)
	stop()
	<-stopped

	var n, total int
	_ = pool.QueryRow(ctx, `SELECT count(*), sum(total_cents) FROM orders_applied`).Scan(&n, &total)
	fmt.Printf("orders applied: %d, total %d cents\n", n, total)
	// Output:
	// applied
	// duplicate
	// orders applied: 1, total 1999 cents
}
