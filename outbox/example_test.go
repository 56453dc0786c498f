package outbox_test

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// The business row and its message commit together, or not at all.
func Example_enqueueInYourTransaction() {
	ctx := context.Background()
	pool, done := testenv.ExampleDatabase(ctx)
	defer done()

	_, _ = pool.Exec(ctx, `CREATE TABLE orders (id int PRIMARY KEY, total_cents int NOT NULL)`)

	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders VALUES (42, 1999)`); err != nil {
			return err
		}
		_, err := outbox.Enqueue(ctx, tx, outbox.Message{
			Exchange:    "orders",
			RoutingKey:  "order.created",
			Payload:     []byte(`{"order_id":42,"total_cents":1999}`),
			OrderingKey: "order-42",
		})
		return err
	})
	if err != nil {
		fmt.Println("enqueue failed:", err)
		return
	}

	var pending int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&pending)
	fmt.Println("rows waiting for the relay:", pending)
	// Output: rows waiting for the relay: 1
}
