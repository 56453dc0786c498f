package test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// Over TLS end to end: the relay process and an inbox consumer reach
// PostgreSQL with sslmode=verify-full and RabbitMQ over amqps:// with a
// client certificate, both verified against the test CA; rows travel
// outbox -> relay -> inbox, and every database session the relay and the
// consumer hold is encrypted, the relay's LISTEN connection included.
func TestTLSRelayAndInboxEndToEnd(t *testing.T) {
	t.Parallel()
	secure := testenv.RequireTLS(t)
	plain := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, plain)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE tls_applied (n int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	queue := tlsTopology(t)

	relayApp, inboxApp := testenv.Name("relay"), testenv.Name("inbox")
	relay := startRelay(t, "RELAY_DATABASE_URL="+secureDSN(t, secure, plain, relayApp), "RELAY_AMQP_URL="+secure.AMQPURL)
	consumer, err := inbox.New(inbox.Config{
		Queue: queue, Name: "tls-test", DB: testenv.Pool(t, secureDSN(t, secure, plain, inboxApp)),
		AMQPURLs: []string{secure.AMQPURL}, RetryDelays: []time.Duration{time.Second},
		Handler: func(ctx context.Context, tx pgx.Tx, m inbox.Message) error {
			_, err := tx.Exec(ctx, `INSERT INTO tls_applied VALUES ($1::int)`, string(m.Body))
			return err
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	testenv.RunInBackground(t, consumer.Run)

	const n = 50
	msgs := make([]outbox.Message, n)
	for i := range msgs {
		msgs[i] = outbox.Message{RoutingKey: queue, ContentType: "text/plain", Payload: fmt.Appendf(nil, "%d", i+1)}
	}
	if _, err := outbox.Enqueue(ctx, pool, msgs...); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, "every row applied through the inbox", func() (bool, error) {
		var got, sum int
		err := pool.QueryRow(ctx, `SELECT count(*), coalesce(sum(n), 0) FROM tls_applied`).Scan(&got, &sum)
		return got == n && sum == n*(n+1)/2, err
	})
	if v := relay.Metric("outboxrelay_relay_listener_connected"); v != "1" {
		t.Errorf("listener_connected = %q, want 1", v)
	}
	sessions := tlsSessions(t, pool, relayApp, inboxApp)
	if s := sessions[relayApp]; s.count < 2 || s.plain > 0 || !s.listening {
		t.Errorf("relay's database sessions: %+v; want at least 2 (a worker and the LISTEN connection), all over TLS", s)
	}
	if s := sessions[inboxApp]; s.count < 1 || s.plain > 0 {
		t.Errorf("inbox's database sessions: %+v; want at least 1, all over TLS", s)
	}
}

// A client that cannot verify the server, or that the server cannot
// verify, is refused, on both services and for both sides; the refusal
// says why, and neither side reports ready.
func TestTLSRefusesWrongCAWrongHostAndNoClientCertificate(t *testing.T) {
	t.Parallel()
	secure := testenv.RequireTLS(t)
	plain := testenv.NewSchema(t, true)
	db := secureDSN(t, secure, plain, "tls-refusals")
	untrusted := testenv.UntrustedCA(t)
	// 127.0.0.2 is this machine too, but not a name in the certificates.
	dbOther := withHost(t, db, testenv.NewProxyOn(t, "127.0.0.2:0", hostPort(t, db), true).Addr())
	amqpOther := withHost(t, secure.AMQPURL, testenv.NewProxyOn(t, "127.0.0.2:0", hostPort(t, secure.AMQPURL), true).Addr())
	const wrongCA, wrongHost = "certificate signed by unknown authority", "not 127.0.0.2"
	cases := []struct {
		name, db, amqp, want string
	}{
		{"amqp wrong CA", db, withQuery(t, secure.AMQPURL, "cacertfile", untrusted), wrongCA},
		{"amqp wrong host", db, amqpOther, wrongHost},
		{"amqp no client certificate", db, withQuery(t, withQuery(t, secure.AMQPURL, "certfile", ""), "keyfile", ""), "certificate required"},
		{"postgres wrong CA", withQuery(t, db, "sslrootcert", untrusted), secure.AMQPURL, wrongCA},
		{"postgres wrong host", dbOther, secure.AMQPURL, wrongHost},
	}
	for _, tc := range cases {
		t.Run("relay "+tc.name, func(t *testing.T) {
			t.Parallel()
			p := startRelay(t, "RELAY_DATABASE_URL="+tc.db, "RELAY_AMQP_URL="+tc.amqp)
			testenv.Eventually(t, time.Minute, "the relay to log "+tc.want, func() (bool, error) {
				return strings.Contains(p.Logs(), tc.want), nil
			})
			if code := status(p, "/readyz"); code != 503 {
				t.Errorf("/readyz = %d, want 503", code)
			}
		})
		t.Run("inbox "+tc.name, func(t *testing.T) {
			t.Parallel()
			var logs testenv.LogBuffer
			c, err := inbox.New(inbox.Config{
				Queue: tlsTopology(t), Name: "tls-refusals", DB: testenv.Pool(t, tc.db), AMQPURLs: []string{tc.amqp},
				RetryDelays: []time.Duration{time.Second},
				Handler:     func(context.Context, pgx.Tx, inbox.Message) error { return nil },
				Logger:      slog.New(slog.NewTextHandler(&logs, nil)),
			})
			if err != nil {
				t.Fatal(err)
			}
			testenv.RunInBackground(t, c.Run)
			testenv.Eventually(t, time.Minute, "the consumer to log "+tc.want, func() (bool, error) {
				return strings.Contains(logs.String(), tc.want), nil
			})
			// The broker refusals leave it unsubscribed; a database
			// refusal shows in retention (and every handled message).
			if strings.HasPrefix(tc.name, "amqp") && c.Ready() == nil {
				t.Error("Ready() = nil, want an error while the broker refuses")
			}
		})
	}
}

// tlsSession sums up one application_name's database sessions.
type tlsSession struct {
	count, plain int
	listening    bool // one of them LISTENs
}

func tlsSessions(t *testing.T, pool interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, apps ...string) map[string]tlsSession {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
SELECT a.application_name, count(*), count(*) FILTER (WHERE NOT s.ssl), bool_or(a.query LIKE 'LISTEN %')
FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
WHERE a.application_name = ANY($1)
GROUP BY 1`, apps)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]tlsSession{}
	var app string
	var s tlsSession
	if _, err := pgx.ForEachRow(rows, []any{&app, &s.count, &s.plain, &s.listening}, func() error {
		out[app] = s
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// tlsTopology declares a queue (and its retry and dead-letter queues),
// deleted when the test ends, over the plain connection; the consumer
// under test reaches it over TLS.
func tlsTopology(t *testing.T) string {
	t.Helper()
	_, ch := testenv.AMQP(t, testenv.Services(t).AMQPURL)
	topo := inbox.Topology{Queue: testenv.Name("tls"), RetryDelays: []time.Duration{time.Second}}
	if err := inbox.DeclareTopology(context.Background(), ch, topo); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, q := range []string{topo.Queue, inbox.DeadQueue(topo.Queue), inbox.RetryQueue(topo.Queue, time.Second)} {
			_, _ = ch.QueueDelete(q, false, false, false)
		}
	})
	return topo.Queue
}

// secureDSN is the TLS database URL for the schema of plain (a NewSchema
// URL), with application_name app, which names its sessions in
// pg_stat_activity.
func secureDSN(t *testing.T, secure testenv.TLSEnv, plain, app string) string {
	t.Helper()
	u, err := url.Parse(plain)
	if err != nil {
		t.Fatal(err)
	}
	dsn := testenv.WithSearchPath(secure.DatabaseURL, u.Query().Get("search_path"))
	return withQuery(t, dsn, "application_name", app)
}

// withQuery sets the query parameter key of raw to value, or removes it
// when value is empty.
func withQuery(t *testing.T, raw, key, value string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	if value == "" {
		q.Del(key)
	} else {
		q.Set(key, value)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func hostPort(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// withHost replaces the host:port of raw.
func withHost(t *testing.T, raw, hostPort string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := net.SplitHostPort(hostPort); err != nil {
		t.Fatal(err)
	}
	u.Host = hostPort
	return u.String()
}
