package console

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// TestScreenshots is make screenshots: it seeds a schema the way the demo
// does (orders published over the last minutes, one failing row, one dead
// row), serves the console, and saves the overview and a row's detail as
// PNGs in $RELAY_SCREENSHOTS. It is skipped unless that is set.
func TestScreenshots(t *testing.T) {
	dir := os.Getenv("RELAY_SCREENSHOTS")
	if dir == "" {
		t.Skip("RELAY_SCREENSHOTS is not set (make screenshots sets it)")
	}
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `
INSERT INTO outbox (exchange, routing_key, payload, ordering_key, created_at, published_at)
SELECT 'orders', 'order.created', convert_to(format('{"order_id": %s, "total_cents": %s}', n, n * 137 % 9000), 'UTF8'),
       'customer-' || (n % 40), now() - (600 - n / 10.0) * interval '1 second', now() - (600 - n / 10.0) * interval '1 second' + interval '20 milliseconds'
FROM generate_series(1, 5900) n;
INSERT INTO outbox (exchange, routing_key, payload, ordering_key)
SELECT 'orders', 'order.created', '{"order_id": 0}', 'customer-' || n FROM generate_series(1, 25) n;
INSERT INTO outbox (exchange, routing_key, payload, attempts, last_error, available_at)
VALUES ('ordres', 'order.created', '{"order_id": 7001}', 2, 'no_exchange: exchange "ordres" does not exist', now() + interval '4 seconds');
INSERT INTO outbox (exchange, routing_key, payload, ordering_key, headers, attempts, last_error, dead_at)
VALUES ('orders', 'order.refunded', '{"order_id": 4242, "reason": "duplicate charge"}', 'customer-7',
        '{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}', 10,
        'unroutable: returned by broker: 312 NO_ROUTE (exchange "orders", routing key "order.refunded")', now());
ANALYZE outbox`); err != nil {
		t.Fatal(err)
	}
	var dead string
	if err := pool.QueryRow(ctx, `SELECT id::text FROM outbox WHERE dead_at IS NOT NULL`).Scan(&dead); err != nil {
		t.Fatal(err)
	}
	_, base := serve(t, Config{Pool: pool})
	b := browser(t)
	for _, shot := range []struct{ path, file string }{
		{"/", "console-overview.png"}, {"/row/" + dead, "console-row.png"},
	} {
		var png []byte
		if err := chromedp.Run(b, chromedp.EmulateViewport(1100, 760), chromedp.Navigate(base+shot.path),
			// Quality 100 is chromedp's PNG; below it writes JPEG, which a
			// .png file must not hold.
			chromedp.WaitVisible("main h1"), chromedp.FullScreenshot(&png, 100)); err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
			t.Fatalf("%s: the screenshot is not a PNG", shot.file)
		}
		if err := os.WriteFile(filepath.Join(dir, shot.file), png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", filepath.Join(dir, shot.file))
	}
}
