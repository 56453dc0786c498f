package console

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
)

// With a relay publishing to a real broker, a row sent to an exchange that
// does not exist shows on the console's failing page, in a real browser,
// with its reason, after its first failed attempt: nothing waits for it
// to die, nor for a later attempt. How long after that attempt it showed is logged (go test -v),
// not asserted.
func TestBrowserShowsAFailingRowAfterItsFirstAttempt(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	ctx := context.Background()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	failedAt := make(chan time.Time, 100)
	r, err := relay.New(pool, relay.Config{
		AMQPURLs: []string{env.AMQPURL}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		// One attempt only during the test: what shows is the first
		// failure, not a later one.
		RetryBase: time.Hour, RetryMax: time.Hour,
		OnBatch: func(b relay.BatchResult) {
			if b.Failed > 0 {
				select {
				case failedAt <- b.CommittedAt:
				default:
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	testenv.RunInBackground(t, r.Run)
	testenv.Eventually(t, 30*time.Second, "relay ready", func() (bool, error) { return r.Ready(ctx) == nil, nil })
	_, base := serve(t, Config{Pool: pool})
	b := browser(t)

	var id int64
	if err := pool.QueryRow(ctx, `INSERT INTO outbox (exchange, routing_key, payload) VALUES ($1, 'k', convert_to('{}', 'UTF8')) RETURNING id`,
		testenv.Name("no-such-exchange")).Scan(&id); err != nil {
		t.Fatal(err)
	}
	var first time.Time
	select {
	case first = <-failedAt:
	case <-time.After(30 * time.Second):
		t.Fatal("no failed attempt within 30 s")
	}
	var shown time.Time
	var table string
	link := fmt.Sprintf(`<a href="/row/%d">%d</a>`, id, id)
	testenv.Eventually(t, 30*time.Second, "the row on the failing page", func() (bool, error) {
		if err := chromedp.Run(b, chromedp.Navigate(base+"/failing"), chromedp.OuterHTML("#failing-rows", &table)); err != nil {
			return false, err
		}
		shown = time.Now()
		return strings.Contains(table, link) && strings.Contains(table, "no_exchange: "), nil
	})
	var overview string
	if err := chromedp.Run(b, chromedp.Navigate(base+"/"), chromedp.Text("#failing", &overview)); err != nil {
		t.Fatal(err)
	}
	if overview != "1" {
		t.Errorf("overview: %s failing, want 1", overview)
	}
	t.Logf("failing row %d shown %s after its first failed attempt committed", id, shown.Sub(first).Round(time.Millisecond))
}
