package test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// Acceptance (scale issue): with three relays being SIGKILLed and
// restarted, 200 keys x 50 rows written by concurrent writers arrive with
// no ordering violation: for every key, the first arrivals of its message
// ids come in id order (which the insert trigger makes commit order).
func TestOrderingPerKeyWithThreeRelaysAndKills(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, true)
	ctx := context.Background()

	const keys, perKey, writers, perTx = 200, 50, 4, 10
	work := make([]string, 0, keys*perKey)
	for k := range keys {
		for range perKey {
			work = append(work, fmt.Sprintf("key-%03d", k))
		}
	}
	rand.Shuffle(len(work), func(i, j int) { work[i], work[j] = work[j], work[i] })

	relayEnv := []string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + env.AMQPURL,
		"RELAY_BATCH_SIZE=100", "RELAY_POLL_INTERVAL=100ms", "RELAY_RECONNECT_MAX=500ms"}
	relays := []*testenv.RelayProc{startRelay(t, relayEnv...), startRelay(t, relayEnv...), startRelay(t, relayEnv...)}

	// Concurrent writers draw transactions of 10 rows from the shuffled
	// work list, so every key is written by several writers at once. They
	// are paced (a load shape, not a synchronisation) so that the writes
	// and the drain span several relay kills.
	var wg sync.WaitGroup
	next := make(chan []string)
	go func() {
		for i := 0; i < len(work); i += perTx {
			next <- work[i : i+perTx]
		}
		close(next)
	}()
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pace := time.NewTicker(15 * time.Millisecond)
			defer pace.Stop()
			for chunk := range next {
				<-pace.C
				msgs := make([]outbox.Message, len(chunk))
				for i, k := range chunk {
					msgs[i] = outbox.Message{RoutingKey: queue, OrderingKey: k, Payload: []byte(k)}
				}
				if _, err := outbox.Enqueue(ctx, pool, msgs...); err != nil {
					t.Errorf("enqueue: %v", err)
					return
				}
			}
		}()
	}
	// Kill a relay every 0.3-1 s while the rows drain.
	stopKills := make(chan struct{})
	kills := 0
	killsDone := make(chan struct{})
	go func() {
		defer close(killsDone)
		for {
			select {
			case <-stopKills:
				return
			case <-time.After(300*time.Millisecond + rand.N(700*time.Millisecond)):
			}
			r := relays[kills%len(relays)]
			r.Kill()
			r.Start()
			kills++
		}
	}()
	wg.Wait()
	testenv.Eventually(t, 3*time.Minute, "every row published", func() (bool, error) {
		var left int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&left)
		return left == 0, err
	})
	close(stopKills)
	<-killsDone

	idOf := map[string]int64{}
	keyOf := map[string]string{}
	rows, err := pool.Query(ctx, `SELECT message_id::text, id, ordering_key FROM outbox`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var m, k string
		var id int64
		if err := rows.Scan(&m, &id, &k); err != nil {
			t.Fatal(err)
		}
		idOf[m], keyOf[m] = id, k
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(idOf) != keys*perKey {
		t.Fatalf("%d rows in the outbox, want %d", len(idOf), keys*perKey)
	}
	got := consumeDistinct(t, ch, queue, len(idOf))
	violations := 0
	last := map[string]int64{}
	for _, m := range got {
		k, id := keyOf[m], idOf[m]
		if id < last[k] {
			violations++
		}
		last[k] = max(last[k], id)
	}
	t.Logf("ordering: %d keys x %d rows, 3 relays, %d kills: %d violations", keys, perKey, kills, violations)
	if violations != 0 {
		t.Fatalf("%d ordering violations", violations)
	}
}

// consumeDistinct returns message ids in order of first arrival until n
// distinct ones have arrived.
func consumeDistinct(t *testing.T, ch *amqp.Channel, queue string, n int) []string {
	t.Helper()
	if err := ch.Qos(2000, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var order []string
	timeout := time.After(2 * time.Minute)
	for len(order) < n {
		select {
		case d := <-deliveries:
			if !seen[d.MessageId] {
				seen[d.MessageId] = true
				order = append(order, d.MessageId)
			}
		case <-timeout:
			t.Fatalf("%d of %d messages arrived", len(order), n)
		}
	}
	return order
}
