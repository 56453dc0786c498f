package relay_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/config"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
)

// findLog returns the first JSON log line in logs with message msg for
// which ok holds.
func findLog(logs string, msg string, ok func(map[string]any) bool) map[string]any {
	for _, line := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg && ok(m) {
			return m
		}
	}
	return nil
}

// The start line names the database and schema, a dead row's line names
// its id, and a progress line reports what moved while there is work.
func TestLogLinesNameWhatTheyAreAbout(t *testing.T) {
	t.Parallel()
	logs := &testenv.LogBuffer{}
	b := setup(t, func(c *relay.Config) {
		c.Logger = config.Config{LogFormat: "json"}.NewLogger(logs) // the binary's handler
		// Shorter than any status query takes: the progress line must
		// still come, as it must on a database too busy for a short one.
		c.StatsInterval = time.Microsecond
		c.MaxAttempts = 1
	})
	ctx := context.Background()
	var okID, deadMsg string
	var deadID int64
	if err := b.pool.QueryRow(ctx, `INSERT INTO outbox (routing_key, payload) VALUES ($1, 'x') RETURNING message_id::text`, b.queue).Scan(&okID); err != nil {
		t.Fatal(err)
	}
	// No queue has this name: the broker returns it, and with one attempt
	// allowed it is dead at once.
	if err := b.pool.QueryRow(ctx, `INSERT INTO outbox (routing_key, payload) VALUES ($1, 'x') RETURNING id, message_id::text`,
		testenv.Name("nowhere")).Scan(&deadID, &deadMsg); err != nil {
		t.Fatal(err)
	}
	b.waitPublished(t, okID)

	var schema string
	if err := b.pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("relay log:\n%s", logs.String())
		}
	})
	testenv.Eventually(t, 30*time.Second, "the start, dead-row and progress lines", func() (bool, error) {
		return findLog(logs.String(), "rows parked as dead", func(m map[string]any) bool {
			ids, _ := m["ids"].([]any)
			return len(ids) == 1 && ids[0] == float64(deadID)
		}) != nil && findLog(logs.String(), "progress", func(m map[string]any) bool {
			return m["published"].(float64) >= 1 && m["interval"] == "1µs"
		}) != nil && findLog(logs.String(), "progress", func(m map[string]any) bool {
			_, text := m["oldest_pending_age"].(string)
			return m["failed"].(float64) >= 1 && text
		}) != nil, nil
	})
	started := findLog(logs.String(), "relay started", func(map[string]any) bool { return true })
	if started == nil || started["schema"] != schema || started["database"] == nil ||
		!strings.Contains(started["database_host"].(string), ":") {
		t.Fatalf("relay started line %v: want database_host, database and schema %q", started, schema)
	}
	for k, v := range started {
		if s, ok := v.(string); ok && strings.Contains(s, b.env.DatabaseURL) {
			t.Errorf("relay started line shows the connection string in %s", k)
		}
	}
}
