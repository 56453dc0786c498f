package testenv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/outbox"
)

// WriteKeyed writes keys x perKey keyed rows for queue from writers
// concurrent writers, in transactions of perTx rows drawn from a shuffled
// list, so every key is written by several writers at once (the
// commit-order gap the insert trigger closes). Each writer commits at most
// one transaction per pace: a load shape that spreads the writes over
// time, not a synchronisation. It returns when every row is committed.
func WriteKeyed(t testing.TB, pool *pgxpool.Pool, queue string, keys, perKey, writers, perTx int, pace time.Duration) {
	t.Helper()
	work := make([]string, 0, keys*perKey)
	for k := range keys {
		for range perKey {
			work = append(work, fmt.Sprintf("key-%03d", k))
		}
	}
	rand.Shuffle(len(work), func(i, j int) { work[i], work[j] = work[j], work[i] })
	next := make(chan []string)
	go func() {
		defer close(next)
		for i := 0; i < len(work); i += perTx {
			next <- work[i:min(i+perTx, len(work))]
		}
	}()
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(pace)
			defer tick.Stop()
			for chunk := range next {
				<-tick.C
				msgs := make([]outbox.Message, len(chunk))
				for i, k := range chunk {
					msgs[i] = outbox.Message{RoutingKey: queue, OrderingKey: k, Payload: []byte(k)}
				}
				if _, err := outbox.Enqueue(context.Background(), pool, msgs...); err != nil {
					t.Errorf("enqueue: %v", err)
					for range next { // let the feeder finish
					}
					return
				}
			}
		}()
	}
	wg.Wait()
}

// KillLoop SIGKILLs and restarts the relays in turn, one every lo to hi,
// until the returned stop is called; stop returns how many kills happened.
func KillLoop(relays []*RelayProc, lo, hi time.Duration) (stop func() int) {
	quit, done := make(chan struct{}), make(chan int)
	go func() {
		kills := 0
		defer func() { done <- kills }()
		for {
			select {
			case <-quit:
				return
			case <-time.After(lo + rand.N(hi-lo)):
			}
			r := relays[kills%len(relays)]
			r.Kill()
			r.Start()
			kills++
		}
	}()
	return func() int {
		close(quit)
		return <-done
	}
}
