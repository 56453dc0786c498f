package console

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/migrations"
)

// serve starts a console on a loopback port for the test and returns its
// base URL.
func serve(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.RunInBackground(t, func(ctx context.Context) error { return s.Serve(ctx, ln) })
	return s, "http://" + ln.Addr().String()
}

// noRedirect is a client that reports redirects instead of following them.
var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func dead(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var id string
	if err := pool.QueryRow(context.Background(), `INSERT INTO outbox (routing_key, payload, attempts, dead_at, last_error)
VALUES ('q', 'x', 10, now(), 'unroutable: test') RETURNING id::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// Off loopback the console will not start without a token; with one,
// every page and action but the login form is refused without it, and
// the token itself never appears on a page.
func TestNonLoopbackNeedsTokenForEverything(t *testing.T) {
	t.Parallel()
	if _, err := New(Config{Addr: "0.0.0.0:8090"}); !errors.Is(err, ErrNeedsToken) {
		t.Fatalf("0.0.0.0 without a token: %v, want ErrNeedsToken", err)
	}
	if _, err := New(Config{Addr: ":8090"}); !errors.Is(err, ErrNeedsToken) {
		t.Fatalf(":8090 without a token: %v, want ErrNeedsToken", err)
	}
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	id := dead(t, pool)
	const token = "s3cret-token-for-the-test"
	_, base := serve(t, Config{Pool: pool, Token: token})
	for _, p := range []struct{ method, path string }{
		{"GET", "/"}, {"GET", "/keys"}, {"GET", "/failing"}, {"GET", "/dead"}, {"GET", "/search?key=a"},
		{"GET", "/row/" + id}, {"GET", "/audit"}, {"POST", "/act"}, {"POST", "/replay"},
	} {
		req, _ := http.NewRequest(p.method, base+p.path, strings.NewReader(url.Values{"id": {id}, "action": {"discard"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized && !(resp.StatusCode == http.StatusSeeOther && resp.Header.Get("Location") == "/login") {
			t.Errorf("%s %s without the token: %d, want 401 or a redirect to /login", p.method, p.path, resp.StatusCode)
		}
		if strings.Contains(string(body), "unroutable: test") {
			t.Errorf("%s %s without the token showed the row", p.method, p.path)
		}
	}
	// A wrong bearer token is refused too; the right one is let in.
	for _, tc := range []struct {
		bearer string
		want   int
	}{{"wrong", http.StatusUnauthorized}, {token, http.StatusOK}} {
		req, _ := http.NewRequest("GET", base+"/dead", nil)
		req.Header.Set("Authorization", "Bearer "+tc.bearer)
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("bearer %q: %d, want %d", tc.bearer, resp.StatusCode, tc.want)
		}
		if strings.Contains(string(body), token) {
			t.Errorf("the token appears on a page")
		}
	}
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("dead rows: %d (%v), want the row untouched", n, err)
	}
}

// A POST from another site is refused: by the browser's Origin and
// Sec-Fetch-Site headers, and, for a client that sends neither, by the
// missing CSRF token.
func TestCrossSitePostRefused(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	id := dead(t, pool)
	s, base := serve(t, Config{Pool: pool})
	form := url.Values{"id": {id}, "action": {"discard"}, "csrf": {s.csrf()}}
	for _, tc := range []struct {
		name    string
		headers map[string]string
		form    url.Values
	}{
		{"foreign origin", map[string]string{"Origin": "http://evil.example"}, form},
		{"cross-site fetch", map[string]string{"Sec-Fetch-Site": "cross-site"}, form},
		{"no csrf token", nil, url.Values{"id": {id}, "action": {"discard"}}},
		{"wrong csrf token", nil, url.Values{"id": {id}, "action": {"discard"}, "csrf": {"00"}}},
	} {
		req, _ := http.NewRequest("POST", base+"/act", strings.NewReader(tc.form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range tc.headers {
			req.Header.Set(k, v)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", tc.name, resp.StatusCode)
		}
	}
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows: %d (%v), want the dead row still there", n, err)
	}
}

// A console running under the read-only role shows no action, and a
// hand-made request (with a valid CSRF token) is refused by the database
// and changes nothing; the operator role's is done and audited.
func TestReadOnlyRoleCannotAct(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	admin := testenv.Pool(t, dsn)
	schema := testenv.CurrentSchema(t, dsn)
	viewer, viewerURL := testenv.LoginRole(t, admin, env.DatabaseURL, "viewer")
	operator, operatorURL := testenv.LoginRole(t, admin, env.DatabaseURL, "operator")
	if _, err := admin.Exec(context.Background(), migrations.Grants(schema, migrations.Roles{Console: viewer, Operator: operator})); err != nil {
		t.Fatal(err)
	}
	id := dead(t, admin)
	for _, tc := range []struct {
		name, role, url string
		status          int
		left            int
	}{{"viewer", viewer, viewerURL, http.StatusForbidden, 1}, {"operator", operator, operatorURL, http.StatusOK, 0}} {
		pool := testenv.Pool(t, testenv.WithSearchPath(tc.url, schema))
		s, base := serve(t, Config{Pool: pool})
		resp, err := http.Get(base + "/dead")
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if shown := strings.Contains(string(page), `value="discard"`); shown != (tc.name == "operator") {
			t.Errorf("%s: discard button shown %v", tc.name, shown)
		}
		resp, err = http.PostForm(base+"/act", url.Values{"id": {id}, "action": {"discard"}, "csrf": {s.csrf()}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: discard answered %d, want %d", tc.name, resp.StatusCode, tc.status)
		}
		var n, audited int
		if err := admin.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM relay_audit WHERE actor = $1 AND action = 'discard' AND via = 'console')`, tc.role).Scan(&n, &audited); err != nil {
			t.Fatal(err)
		}
		if n != tc.left || audited != 1-tc.left {
			t.Errorf("%s: %d rows left, %d audit entries; want %d and %d", tc.name, n, audited, tc.left, 1-tc.left)
		}
	}
}
