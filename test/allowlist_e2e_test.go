package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// The allow-list end to end, on the real broker: `relay migrate` with
// allowed_exchanges and allowed_queues parks the pending rows it no longer
// allows; the application role then cannot insert a row to another
// exchange, to a queue not allowed through the default exchange, to the
// inbox's retry or dead-letter queue, or with a reserved header; a relay
// publishes the allowed rows, and nothing reaches the other queues.
func TestAllowListKeepsRowsFromOtherQueues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	owner := testenv.Pool(t, dsn)
	root := testenv.Pool(t, env.DatabaseURL) // drops the role last
	app, appURL := testenv.LoginRole(t, root, env.DatabaseURL, "app")

	_, ch := testenv.AMQP(t, env.AMQPURL)
	allowed, other, bound := testenv.Name("allowed"), testenv.Name("other"), testenv.Name("events")
	exchange, otherExchange := testenv.Name("events"), testenv.Name("elsewhere")
	topo := inbox.Topology{Queue: allowed, RetryDelays: []time.Duration{time.Second}, DeliveryLimit: -1}
	if err := inbox.DeclareTopology(ctx, ch, topo); err != nil {
		t.Fatal(err)
	}
	queues := []string{allowed, inbox.DeadQueue(allowed), inbox.RetryQueue(allowed, time.Second), other, bound}
	for _, q := range queues[3:] {
		if _, err := ch.QueueDeclare(q, false, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, x := range [][2]string{{exchange, bound}, {otherExchange, other}} {
		if err := ch.ExchangeDeclare(x[0], "fanout", false, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		if err := ch.QueueBind(x[1], "", x[0], false, nil); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, q := range queues {
			_, _ = ch.QueueDelete(q, false, false, false)
		}
		for _, x := range []string{exchange, otherExchange} {
			_ = ch.ExchangeDelete(x, false, false)
		}
	})

	// Pending before the allow-list: rows it will not allow.
	if _, err := owner.Exec(ctx, `INSERT INTO outbox (exchange, routing_key, payload) VALUES ($1, '', 'x'), ('', $2, 'x')`,
		otherExchange, other); err != nil {
		t.Fatal(err)
	}
	out, code := relayCmd(t, []string{"RELAY_DATABASE_URL=" + dsn, "RELAY_ALLOWED_EXCHANGES=" + exchange, "RELAY_ALLOWED_QUEUES=" + allowed},
		"migrate", "--app-role", app)
	if code != 0 {
		t.Fatalf("relay migrate with an allow-list: exit %d\n%s", code, out)
	}

	appPool := testenv.Pool(t, appURL+"&search_path="+testenv.CurrentSchema(t, dsn))
	insert := func(exchange, routingKey, headers string) error {
		_, err := appPool.Exec(ctx, `INSERT INTO outbox (exchange, routing_key, payload, headers) VALUES ($1, $2, 'x', $3)`,
			exchange, routingKey, headers)
		return err
	}
	for _, r := range []struct{ what, exchange, key, headers, want string }{
		{"another exchange", otherExchange, "", "{}", "not an allowed target"},
		{"a queue not allowed", "", other, "{}", "not an allowed target"},
		{"the dead-letter queue", "", inbox.DeadQueue(allowed), "{}", "not an allowed target"},
		{"the retry queue", "", inbox.RetryQueue(allowed, time.Second), "{}", "not an allowed target"},
		{"a forged inbox header", "", allowed, `{"x-inbox-attempts": 9}`, "outbox_headers_reserved"},
		{"a forged x-death", "", allowed, `{"x-death": []}`, "outbox_headers_reserved"},
		{"extra routing (CC)", "", allowed, `{"CC": ["` + other + `"]}`, "outbox_headers_reserved"},
		{"extra routing (BCC)", exchange, "", `{"BCC": ["` + other + `"]}`, "outbox_headers_reserved"},
	} {
		if err := insert(r.exchange, r.key, r.headers); err == nil || !strings.Contains(err.Error(), r.want) {
			t.Errorf("%s: %v, want a refusal naming %q", r.what, err, r.want)
		}
	}
	const each = 10
	for range each {
		if err := insert("", allowed, "{}"); err != nil {
			t.Fatalf("an allowed queue: %v", err)
		}
		if err := insert(exchange, "any.key", "{}"); err != nil {
			t.Fatalf("an allowed exchange: %v", err)
		}
	}

	startRelay(t, "RELAY_DATABASE_URL="+dsn, "RELAY_AMQP_URL="+env.AMQPURL)
	testenv.Eventually(t, time.Minute, "the allowed rows published", func() (bool, error) {
		var n int
		err := owner.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NOT NULL`).Scan(&n)
		return n == 2*each, err
	})
	var parked []string
	rows, err := owner.Query(ctx, `SELECT last_error FROM outbox WHERE dead_at IS NOT NULL ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var e string
		if err := rows.Scan(&e); err != nil {
			t.Fatal(err)
		}
		parked = append(parked, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(parked) != 2 || !strings.HasPrefix(parked[0], "refused_target:") || !strings.HasPrefix(parked[1], "refused_target:") {
		t.Errorf("rows pending before the allow-list: dead with %q, want both refused_target", parked)
	}
	for q, want := range map[string]int{allowed: each, bound: each, other: 0,
		inbox.DeadQueue(allowed): 0, inbox.RetryQueue(allowed, time.Second): 0} {
		st, err := ch.QueueDeclarePassive(q, false, false, false, false, nil) // passive: only the name counts
		if err != nil {
			t.Fatalf("queue %s: %v", q, err)
		}
		if st.Messages != want {
			t.Errorf("queue %s holds %d messages, want %d", q, st.Messages, want)
		}
	}
}
