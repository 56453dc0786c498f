package testenv

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/outbox"
)

// WriteRows commits up to n rows at rate rows/s, in transactions of 50, until
// n are written or ctx ends, and returns how many it wrote. msg(i) is the
// i-th row. A transaction whose outcome is unknown (the database is
// restarting) is retried with the same message ids, so a retry of a commit
// that did land fails on the unique key and counts as done.
func WriteRows(ctx context.Context, t testing.TB, pool *pgxpool.Pool, n, rate int, msg func(i int) outbox.Message) int {
	t.Helper()
	const perTx = 50
	tick := time.NewTicker(time.Second * perTx / time.Duration(rate))
	defer tick.Stop()
	msgs := make([]outbox.Message, 0, perTx)
	written := 0
	for written < n {
		select {
		case <-ctx.Done():
			return written
		case <-tick.C:
		}
		msgs = msgs[:0]
		for i := written; i < min(n, written+perTx); i++ {
			msgs = append(msgs, msg(i))
		}
		deadline := time.Now().Add(2 * time.Minute)
		for {
			_, err := outbox.Enqueue(context.Background(), pool, msgs...)
			var pgErr *pgconn.PgError
			if err == nil || (errors.As(err, &pgErr) && pgErr.Code == "23505") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("writer: %v", err)
			}
			time.Sleep(50 * time.Millisecond) // the database is restarting: retry the same rows
		}
		written += len(msgs)
	}
	return written
}

// ConsumeAll reads queue through the first of urls that answers (auto-ack)
// until every id in committed has arrived and the queue is empty, or nothing
// arrives for 15s, and returns every delivery in arrival order.
func ConsumeAll(t testing.TB, urls []string, queue string, committed map[string]bool) []Arrival {
	t.Helper()
	var conn *amqp.Connection
	var err error
	for _, u := range urls {
		if conn, err = amqp.Dial(u); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Qos(2000, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []Arrival
	seen := map[string]bool{}
	idle := time.NewTimer(15 * time.Second)
	defer idle.Stop()
	for {
		select {
		case dl, ok := <-deliveries:
			if !ok {
				t.Fatal("consumer closed")
			}
			out = append(out, Arrival{MessageID: dl.MessageId, At: time.Now()})
			if committed[dl.MessageId] {
				seen[dl.MessageId] = true
			}
			if len(seen) >= len(committed) {
				// Everything arrived; drain what is left (duplicates).
				q, err := ch.QueueDeclarePassive(queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
				if err == nil && q.Messages == 0 && len(deliveries) == 0 {
					return out
				}
			}
			if !idle.Stop() {
				<-idle.C
			}
			idle.Reset(15 * time.Second)
		case <-idle.C:
			return out
		}
	}
}

// WaitPublished waits until no row of pool's outbox is pending; when time
// runs out it reports what is left (the first pending rows and the end of
// each of relays' logs) before failing.
func WaitPublished(t testing.TB, pool *pgxpool.Pool, within time.Duration, relays ...*RelayProc) {
	t.Helper()
	ctx := context.Background()
	end := time.Now().Add(within)
	for {
		var left int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&left)
		if err == nil && left == 0 {
			return
		}
		if time.Now().After(end) {
			ReportPending(t, pool, relays)
			t.Fatalf("timed out after %s waiting for every row published: %d left (last error: %v)", within, left, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ReportPending logs the first pending rows and the end of each relay's log.
func ReportPending(t testing.TB, pool *pgxpool.Pool, relays []*RelayProc) {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT id, coalesce(ordering_key, ''), attempts, suspected,
		coalesce(last_error, ''), available_at - now(), dead_at IS NOT NULL FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 20`)
	if err != nil {
		t.Logf("pending rows: %v", err)
	} else {
		for rows.Next() {
			var id int64
			var key, lastErr string
			var attempts int
			var suspected, dead bool
			var due time.Duration
			if err := rows.Scan(&id, &key, &attempts, &suspected, &lastErr, &due, &dead); err != nil {
				t.Logf("pending rows: %v", err)
				break
			}
			t.Logf("pending: id %d key %q attempts %d suspected %v dead %v due in %s last_error %q", id, key, attempts, suspected, dead, due, lastErr)
		}
		rows.Close()
	}
	for i, r := range relays {
		logs := strings.Split(r.Logs(), "\n")
		t.Logf("relay %d log (last 60 lines):\n%s", i, strings.Join(logs[max(0, len(logs)-60):], "\n"))
	}
}
