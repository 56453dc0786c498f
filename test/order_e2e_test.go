package test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// With three relays
// being SIGKILLed and restarted, rows written by concurrent writers arrive
// with no ordering violation: for every key, the first arrivals of its
// message ids come in id order (which the insert trigger makes commit
// order). Three shapes: many keys with short queues, and 20 keys and one
// key with deep queues, where each claim takes a run of a key's rows and
// publishes it pipelined. Half the rows are written before the relays
// start, so every key begins with a backlog; the rest arrive while they
// drain.
//
// Both retention modes run every shape: with retention: none each row is
// deleted by the transaction that records its confirm, and the rows are
// judged against a ledger of what was written.
func TestOrderingPerKeyWithThreeRelaysAndKills(t *testing.T) {
	t.Parallel()
	for _, deletes := range []bool{false, true} {
		for _, shape := range []struct{ keys, perKey int }{{200, 50}, {20, 400}, {1, 4000}} {
			name := fmt.Sprintf("keys=%d", shape.keys)
			if deletes {
				name = "retention=none/" + name
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				orderingUnderKills(t, shape.keys, shape.perKey, deletes)
			})
		}
	}
}

func orderingUnderKills(t *testing.T, keys, perKey int, deletes bool) {
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, true)
	ctx := context.Background()
	table := "outbox"
	if deletes {
		testenv.Ledger(t, pool)
		table = testenv.LedgerTable
	}

	// The backlog: half of every key, from four writers at once.
	testenv.WriteKeyed(t, pool, queue, keys, perKey/2, 4, 50, time.Millisecond)

	relayEnv := []string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + env.AMQPURL,
		"RELAY_BATCH_SIZE=100", "RELAY_POLL_INTERVAL=100ms", "RELAY_RECONNECT_MAX=500ms"}
	if deletes {
		relayEnv = append(relayEnv, "RELAY_RETENTION=none")
	}
	relays := []*testenv.RelayProc{startRelay(t, relayEnv...), startRelay(t, relayEnv...), startRelay(t, relayEnv...)}

	// Four writers, transactions of 10 rows, each key written by several
	// writers at once; a relay is killed every 0.3-1 s meanwhile.
	stopKills := testenv.KillLoop(relays, 300*time.Millisecond, time.Second)
	testenv.WriteKeyed(t, pool, queue, keys, perKey-perKey/2, 4, 10, 5*time.Millisecond)
	testenv.WaitPublished(t, pool, 3*time.Minute)
	kills := stopKills()

	var rowCount, kept int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+table+`), (SELECT count(*) FROM outbox)`).Scan(&rowCount, &kept); err != nil {
		t.Fatal(err)
	}
	if rowCount != keys*perKey {
		t.Fatalf("%d rows in %s, want %d", rowCount, table, keys*perKey)
	}
	if deletes && kept != 0 {
		t.Fatalf("retention: none: %d published rows kept in the outbox, want none", kept)
	}
	got := testenv.ConsumeDistinct(t, ch, queue, rowCount, 2*time.Minute)
	violations, judged := testenv.OrderViolationsIn(t, pool, table, got)
	if judged != keys {
		t.Fatalf("judged %d keys, want %d", judged, keys)
	}
	t.Logf("ordering: %d keys x %d rows, 3 relays, %d kills, deletes %t: %d violations", keys, perKey, kills, deletes, violations)
	if violations != 0 {
		t.Fatalf("%d ordering violations", violations)
	}
}
