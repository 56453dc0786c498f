package cli

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/migrations"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// runMain runs the command line in process and returns its exit code,
// standard output and standard error.
func runMain(t *testing.T, ctx context.Context, env []string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr testenv.LogBuffer
	code := Main(ctx, args, env, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestPrintable(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"orders.created":      "orders.created",
		"with space, ünï ✓":   "with space, ünï ✓",
		"":                    "",
		"red\x1b[31m":         `"red\x1b[31m"`,
		"two\nlines":          `"two\nlines"`,
		"tab\there":           `"tab\there"`,
		"bidi\u202eevil":      `"bidi\u202eevil"`,
		"bad utf8 \xff":       `"bad utf8 \xff"`,
		"title\x1b]0;pwn\x07": `"title\x1b]0;pwn\a"`,
	}
	for in, want := range cases {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %s, want %s", in, got, want)
		}
	}
}

// Text output shows what whoever inserted a row chose; a terminal escape
// in it must reach the operator's terminal escaped.
func TestDeadAndStatusEscapeControlCharacters(t *testing.T) {
	t.Parallel()
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	ctx := context.Background()
	// A dead row is exempt from the row-limit constraints, so it can hold
	// what a row written before them (or the relay's own last_error) may.
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (exchange, routing_key, payload, attempts, last_error, dead_at)
		VALUES ($1, $2, 'x', 3, $3, now())`, "ex\x1b]0;pwned\x07", "rk\x1b[31m", "refused:\x1b[2J\nforged line"); err != nil {
		t.Fatal(err)
	}
	env := []string{"RELAY_DATABASE_URL=" + dsn}
	for _, args := range [][]string{{"dead"}, {"status"}} {
		code, out, errOut := runMain(t, ctx, env, args...)
		if code != 0 {
			t.Fatalf("relay %s: exit %d: %s", args[0], code, errOut)
		}
		if strings.ContainsAny(out, "\x1b\x07") {
			t.Errorf("relay %s printed a raw control character:\n%q", args[0], out)
		}
		if !strings.Contains(out, `"ex\x1b]0;pwned\a"`) {
			t.Errorf("relay %s: exchange not shown escaped:\n%s", args[0], out)
		}
		if args[0] == "dead" {
			if !strings.Contains(out, `"rk\x1b[31m"`) || !strings.Contains(out, `"refused:\x1b[2J forged line"`) {
				t.Errorf("relay dead: routing key or last_error not shown escaped:\n%s", out)
			}
		}
	}
	// JSON was already safe: the encoder escapes.
	code, out, _ := runMain(t, ctx, env, "dead", "--json")
	if code != 0 || strings.ContainsAny(out, "\x1b\x07") || !strings.Contains(out, `rk\u001b[31m`) {
		t.Errorf("relay dead --json: exit %d:\n%s", code, out)
	}
}

func TestRunRefusesAnUnmigratedSchema(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a loop ends as exit 0
	defer cancel()
	code, _, errOut := runMain(t, ctx, []string{
		"RELAY_DATABASE_URL=" + testenv.NewDatabase(t), "RELAY_AMQP_URL=" + env.AMQPURL, "RELAY_HTTP_ADDR="}, "run")
	if code != exitFailed || !strings.Contains(errOut, "has no relay tables: run `relay migrate`") {
		t.Fatalf("exit %d, want %d naming relay migrate; stderr:\n%s", code, exitFailed, errOut)
	}
	if lines := strings.Count(errOut, "\n"); lines > 3 {
		t.Errorf("%d lines for a start-up refusal, want one error:\n%s", lines, errOut)
	}
}

func TestRunRefusesAnOlderSchema(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	if _, err := pool.Exec(context.Background(), `DELETE FROM `+migrations.VersionTable+
		` WHERE version_id = (SELECT max(version_id) FROM `+migrations.VersionTable+`)`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a loop ends as exit 0
	defer cancel()
	code, _, errOut := runMain(t, ctx, []string{
		"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + env.AMQPURL, "RELAY_HTTP_ADDR="}, "run")
	if code != exitFailed || !strings.Contains(errOut, "this binary needs") || !strings.Contains(errOut, "relay migrate") {
		t.Fatalf("exit %d, want %d naming relay migrate; stderr:\n%s", code, exitFailed, errOut)
	}
}

// A database that refuses the relay for good ends `relay run` after the
// start grace, saying why, without a password and without spinning; while
// it waits, /readyz says why too.
func TestRunGivesUpWhenTheDatabaseRefuses(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	base, err := url.Parse(testenv.NewSchema(t, true))
	if err != nil {
		t.Fatal(err)
	}
	realPassword, _ := base.User.Password()
	wrongPassword := *base
	wrongPassword.User = url.UserPassword(base.User.Username(), "wrong-pw-81724")
	noDatabase := *base
	noDatabase.Path = "/" + testenv.Name("no_such_db")
	cases := []struct {
		name, dsn, want string
	}{
		{"wrong password", wrongPassword.String(), "SQLSTATE 28P01"},
		{"missing database", noDatabase.String(), "SQLSTATE 3D000"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			addr := freeAddr(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			type result struct {
				code   int
				stderr string
			}
			done := make(chan result, 1)
			start := time.Now()
			go func() {
				code, _, errOut := runMain(t, ctx, []string{"RELAY_DATABASE_URL=" + tc.dsn, "RELAY_AMQP_URL=" + env.AMQPURL,
					"RELAY_HTTP_ADDR=" + addr, "RELAY_RECONNECT_MIN=10ms", "RELAY_RECONNECT_MAX=500ms"}, "run")
				done <- result{code, errOut}
			}()
			var body string
			testenv.Eventually(t, 10*time.Second, "/readyz to say why", func() (bool, error) {
				resp, err := http.Get("http://" + addr + "/readyz")
				if err != nil {
					return false, err
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				body = string(b)
				return resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(body, tc.want) &&
					strings.HasPrefix(body, "not ready: starting: waiting for the database: "), nil
			})
			res := <-done
			elapsed := time.Since(start)
			if res.code != exitFailed || !strings.Contains(res.stderr, "database refuses the relay (check database_url)") ||
				!strings.Contains(res.stderr, tc.want) {
				t.Fatalf("exit %d, want %d with the reason; stderr:\n%s", res.code, exitFailed, res.stderr)
			}
			// The same error is logged at most once per reconnect_max
			// (500ms) over a 5s grace: a dozen lines at most. A spinning
			// loop writes hundreds.
			if lines := strings.Count(res.stderr, "\n"); lines > 15 {
				t.Errorf("%d log lines in %s: spinning?\n%s", lines, elapsed, res.stderr)
			}
			// /readyz may be reachable by more than the operator: it says
			// what kind of trouble, not who the relay is nor where.
			for _, name := range []string{"user=" + base.User.Username(), strings.TrimPrefix(noDatabase.Path, "/"), base.Hostname()} {
				if strings.Contains(body, name) {
					t.Errorf("/readyz names %q: %s", name, body)
				}
			}
			for _, secret := range []string{"wrong-pw-81724", realPassword} {
				if strings.Contains(res.stderr, secret) || strings.Contains(body, secret) {
					t.Errorf("a password was printed:\n%s\n%s", res.stderr, body)
				}
			}
		})
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
