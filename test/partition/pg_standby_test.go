//go:build partition

package partition

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// A relay whose database URL reaches only the standby (a URL without
// target_session_attrs, or one naming the wrong node) is not ready, says
// the server is read-only, and charges nothing: its claims fail on the
// server and the rows stay as they were.
func TestPGStandbyOnlyIsNotReady(t *testing.T) {
	env := testenv.Services(t)
	pair := testenv.StartPGPair(t, "sync")
	dsn := pair.NewSchema()
	schema := dsn[strings.LastIndex(dsn, "search_path=")+len("search_path="):]
	pool := testenv.Pool(t, dsn)
	_, ch := testenv.AMQP(t, env.AMQPURL)
	queue := testenv.Queue(t, ch, true)
	if _, err := outbox.Enqueue(context.Background(), pool, outbox.Message{RoutingKey: queue, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	// Synchronous replication: the row and the schema are on the standby.
	r := testenv.StartRelayProc(t, append([]string{
		"RELAY_DATABASE_URL=" + pair.StandbyURL + "&search_path=" + schema, "RELAY_AMQP_URL=" + env.AMQPURL,
	}, pgRelaySettings...)...)
	var body string
	testenv.Eventually(t, time.Minute, "not ready: read-only", func() (bool, error) {
		resp, err := http.Get(r.URL() + "/readyz")
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(body, "read-only"), nil
	})
	testenv.Eventually(t, time.Minute, "a claim refused by the standby", func() (bool, error) {
		return strings.Contains(r.Logs(), "SQLSTATE 25006"), nil
	})
	var attempts int
	var published bool
	if err := pool.QueryRow(context.Background(),
		`SELECT attempts, published_at IS NOT NULL FROM outbox`).Scan(&attempts, &published); err != nil {
		t.Fatal(err)
	}
	t.Logf("readyz: %s", strings.TrimSpace(body))
	if attempts != 0 || published {
		t.Errorf("a relay on the standby changed the row: attempts %d, published %v", attempts, published)
	}
}
