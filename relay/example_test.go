package relay_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
	"github.com/outboxrelay/outboxrelay/relay"
)

// The relay can run inside the application's own process, on the
// application's pool, instead of as the relay binary: start Run on a
// goroutine, cancel its context to stop it.
func Example_runBesideYourApplication() {
	ctx := context.Background()
	env := testenv.MustServices()
	pool, done := testenv.ExampleDatabase(ctx)
	defer done()
	queue, ch, closeQueue := exampleQueue(env.AMQPURL)
	defer closeQueue()

	r, err := relay.New(pool, relay.Config{
		AMQPURLs: []string{env.AMQPURL},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		panic(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	go func() { stopped <- r.Run(runCtx) }()

	if _, err := outbox.Enqueue(ctx, pool, outbox.Message{RoutingKey: queue, Payload: []byte(`{"order_id":42}`)}); err != nil {
		panic(err)
	}
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		panic(err)
	}
	d := <-deliveries
	fmt.Printf("received %s\n", d.Body)

	stop()
	fmt.Println("relay stopped, error:", <-stopped)
	// Output:
	// received {"order_id":42}
	// relay stopped, error: <nil>
}

// Draining a table once (after a migration, or in a batch job): run the
// relay until the status shows nothing pending, then stop it.
func Example_drainOnce() {
	ctx := context.Background()
	env := testenv.MustServices()
	pool, done := testenv.ExampleDatabase(ctx)
	defer done()
	queue, _, closeQueue := exampleQueue(env.AMQPURL)
	defer closeQueue()

	msgs := make([]outbox.Message, 1000)
	for i := range msgs {
		msgs[i] = outbox.Message{RoutingKey: queue, Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))}
	}
	if _, err := outbox.Enqueue(ctx, pool, msgs...); err != nil {
		panic(err)
	}

	r, err := relay.New(pool, relay.Config{
		AMQPURLs: []string{env.AMQPURL},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		panic(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	go func() { stopped <- r.Run(runCtx) }()
	for {
		st, err := relay.ReadStatus(ctx, pool)
		if err != nil {
			panic(err)
		}
		if st.Pending == 0 {
			fmt.Println("pending:", st.Pending, "dead:", st.Dead)
			break
		}
		time.Sleep(50 * time.Millisecond) // a poll, as an operator's script would
	}
	stop()
	if err := <-stopped; err != nil {
		panic(err)
	}
	// Output: pending: 0 dead: 0
}

// exampleQueue declares a quorum queue of its own on the default exchange.
func exampleQueue(amqpURL string) (name string, ch *amqp.Channel, closeQueue func()) {
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		panic(err)
	}
	if ch, err = conn.Channel(); err != nil {
		panic(err)
	}
	name = testenv.Name("example")
	if _, err := ch.QueueDeclare(name, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		panic(err)
	}
	return name, ch, func() {
		_, _ = ch.QueueDelete(name, false, false, false)
		_ = conn.Close()
	}
}
