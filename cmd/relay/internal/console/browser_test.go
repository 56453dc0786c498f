package console

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// browser starts a headless Chromium (Debian's chromium package, with a
// fresh profile) for the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("chromium is not installed: scripts/services.sh up installs it, and CI needs it")
		}
		t.Skip("chromium is not installed (scripts/services.sh up installs it)")
	}
	// Chromium's helper processes may still be writing the profile when
	// the browser is gone, so the profile is removed on a best-effort basis
	// rather than by t.TempDir's strict cleanup.
	profile, err := os.MkdirTemp("", "relay-console-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(profile) })
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.NoFirstRun, chromedp.UserDataDir(profile), chromedp.Flag("disable-crash-reporter", true),
	}
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	// chromedp logs the CDP events it cannot decode (newer Chromium
	// fields); they do not concern the test.
	ctx, cancel2 := chromedp.NewContext(actx, chromedp.WithErrorf(func(string, ...any) {}))
	t.Cleanup(cancel2)
	ctx, cancel3 := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(cancel3)
	if err := chromedp.Run(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// In a real browser: the overview shows the seeded table's counts; a row
// whose key, headers and payload hold <script> and control characters is
// shown as text and runs nothing; search by message id finds it; and the
// dead row's requeue is refused by the key limit, while a clean dead
// row is requeued by its button.
func TestBrowserOverviewHostileRowSearchRequeue(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `
INSERT INTO outbox (routing_key, payload, published_at) SELECT 'q', 'x', now() FROM generate_series(1, 7);
INSERT INTO outbox (routing_key, payload) SELECT 'q', 'x' FROM generate_series(1, 3);
INSERT INTO outbox (routing_key, payload, attempts, last_error, available_at) VALUES ('q', 'x', 1, 'unroutable: nobody', now() + interval '1 hour')`); err != nil {
		t.Fatal(err)
	}
	var id, msgID string
	if err := pool.QueryRow(ctx, `INSERT INTO outbox (routing_key, payload, ordering_key, headers, attempts, dead_at, last_error)
VALUES ('rk<script>window.pwned=1</script>', convert_to('<script>window.pwned=2</script>' || chr(27) || '[31m', 'UTF8'),
        '<img src=x onerror="window.pwned=3">' || chr(7), '{"h": "<script>window.pwned=4</script>"}', 10, now(), '<b>bold</b>')
RETURNING id::text, message_id::text`).Scan(&id, &msgID); err != nil {
		t.Fatal(err)
	}
	_, base := serve(t, Config{Pool: pool})
	b := browser(t)

	var pending, failing, dead, published string
	if err := chromedp.Run(b, chromedp.Navigate(base+"/"),
		chromedp.Text("#pending", &pending), chromedp.Text("#failing", &failing),
		chromedp.Text("#dead", &dead), chromedp.Text("#published", &published)); err != nil {
		t.Fatal(err)
	}
	if pending != "4" || failing != "1" || dead != "1" || published != "7" {
		t.Errorf("overview: pending %s, failing %s, dead %s, published %s; want 4, 1, 1, 7", pending, failing, dead, published)
	}

	var found, key, payload, headers string
	var pwned bool
	if err := chromedp.Run(b, chromedp.Navigate(base+"/search?message_id="+msgID),
		chromedp.Text("#results", &found),
		chromedp.Click(`#results a[href="/row/`+id+`"]`), chromedp.WaitVisible("#detail"),
		chromedp.Text("#ordering-key", &key), chromedp.Text("#payload", &payload), chromedp.Text("#headers", &headers),
		chromedp.Evaluate(`window.pwned !== undefined || document.querySelector('main script, main img, main b') !== null`, &pwned)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(found, msgID) {
		t.Errorf("search by message id: %q, want the row", found)
	}
	if pwned {
		t.Error("the row's content ran or became markup")
	}
	if key != `<img src=x onerror="window.pwned=3">\a` || payload != `<script>window.pwned=2</script>\x1b[31m` ||
		!strings.Contains(headers, `<script>window.pwned=4</script>`) {
		t.Errorf("shown as text: key %q, payload %q, headers %q", key, payload, headers)
	}

	// The hostile row's key breaks the short-string limit, so requeue
	// refuses it, says which limit, and leaves it dead; a clean dead row
	// is requeued by the same button.
	var state, done string
	if err := chromedp.Run(b, chromedp.Click("#requeue", chromedp.NodeVisible), chromedp.WaitVisible("#notice"), chromedp.Text("#notice", &done)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(done, "requeue: 0 of 1 row(s)") || !strings.Contains(done, "outbox_ordering_key_shortstr") {
		t.Errorf("requeue of a row that breaks a limit answered %q", done)
	}
	if err := chromedp.Run(b, chromedp.Navigate(base+"/row/"+id), chromedp.Text("#state", &state)); err != nil {
		t.Fatal(err)
	}
	if state != "dead" {
		t.Errorf("after a refused requeue the row is %s, want dead", state)
	}
	var clean string
	if err := pool.QueryRow(ctx, `INSERT INTO outbox (routing_key, payload, attempts, dead_at, last_error)
VALUES ('q', 'x', 10, now(), 'refused') RETURNING id::text`).Scan(&clean); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Run(b, chromedp.Navigate(base+"/row/"+clean), chromedp.Click("#requeue", chromedp.NodeVisible),
		chromedp.WaitVisible("#notice"), chromedp.Text("#notice", &done)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(done, "requeue: 1 of 1 row(s)") {
		t.Fatalf("requeue answered %q", done)
	}
	if err := chromedp.Run(b, chromedp.Navigate(base+"/row/"+clean), chromedp.Text("#state", &state)); err != nil {
		t.Fatal(err)
	}
	if state != "pending" {
		t.Errorf("after requeue the row is %s, want pending", state)
	}
}
