package test

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
)

// docSection returns the blocks of lang under the heading "### title" of
// file (relative to the checkout: README.md, docs/design.md).
func docSection(t *testing.T, file, title, lang string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.Root(), file))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n### "+title+"\n")
	if !ok {
		t.Fatalf("%s has no section %q", file, title)
	}
	if end := strings.Index(rest, "\n#"); end >= 0 {
		rest = rest[:end]
	}
	re := regexp.MustCompile("(?ms)^```" + lang + "\n(.*?)^```\n")
	var out []string
	for _, m := range re.FindAllStringSubmatch(rest, -1) {
		out = append(out, m[1])
	}
	if len(out) == 0 {
		t.Fatalf("%s section %q has no %s block", file, title, lang)
	}
	return out
}

// The documentation's insert samples run as written against a migrated
// schema with the demo's orders table: the README's plain SQL through
// psql, its Python sample with psycopg2, its Node sample with
// node-postgres, its Go sample compiled and run as a program, and the
// AMQP-properties insert of docs/design.md. The relay publishes what they
// wrote, and a plain amqp091-go consumer reads every body back byte for
// byte, backslashes and non-ASCII included.
func TestREADMESamplesRun(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	ctx := context.Background()
	// The samples publish to exchange "orders", which a running demo's
	// consumer is bound to on this shared broker: the test gives them an
	// exchange of its own, and changes nothing else.
	exchange := testenv.Name("orders")
	own := strings.NewReplacer(`('orders',`, `('`+exchange+`',`, `"orders",`, `"`+exchange+`",`)
	for _, sql := range docSection(t, "README.md", "Inserting with plain SQL", "sql") {
		runSample(t, dsn, own.Replace(sql), psqlBin(t), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", libpqURL(t, dsn), "-f", "-")
	}
	for _, sql := range docSection(t, "docs/design.md", "AMQP properties", "sql") {
		if _, err := pool.Exec(ctx, own.Replace(sql)); err != nil {
			t.Fatalf("SQL sample failed: %v\n%s", err, sql)
		}
	}
	runSample(t, dsn, own.Replace(docSection(t, "README.md", "Inserting from Python", "python")[0]), pythonBin(t), "-")
	runSample(t, dsn, own.Replace(docSection(t, "README.md", "Inserting from Node", "js")[0]), nodeBin(t), "-")
	runGoSample(t, own.Replace(docSection(t, "README.md", "Inserting from Go", "go")[0]), dsn)

	var orders int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM orders`).Scan(&orders); err != nil || orders != 4 {
		t.Fatalf("orders: %d rows (err %v), want the 4 the samples wrote", orders, err)
	}
	_, ch := testenv.AMQP(t, env.AMQPURL)
	if err := ch.ExchangeDeclare(exchange, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err) // a topic exchange, as the demo's consumer declares "orders"
	}
	queue := testenv.Queue(t, ch, false)
	if err := ch.QueueBind(queue, "order.created", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, relay.Config{AMQPURLs: []string{env.AMQPURL}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay: %v", err)
		}
	}()
	// The bodies as the samples mean them: JSON text, its backslash
	// escapes and UTF-8 as written.
	want := map[string]int{
		`{"order_id":42,"total_cents":1999,"note":"café \\ ✓"}`:                 1, // psql
		`{"order_id":42,"total_cents":1999}`:                                    1, // docs/design.md
		`{"order_id":43,"total_cents":2500}`:                                    1, // Go
		`{"order_id":44,"total_cents":1250,"path":"C:\\temp","note":"naïve ✓"}`: 1, // Python
		`{"order_id":45,"total_cents":990,"path":"C:\\temp","note":"naïve ✓"}`:  1, // Node
	}
	got := map[string]int{}
	timeout := time.After(30 * time.Second)
	for n := 0; n < len(want); n++ {
		select {
		case d := <-deliveries:
			got[string(d.Body)]++
			if d.ContentType != "application/json" {
				t.Errorf("message %s: content type %q, want application/json", d.Body, d.ContentType)
			}
		case <-timeout:
			t.Fatalf("after 30 s, %d of %d messages arrived: %v", n, len(want), got)
		}
	}
	if !maps.Equal(got, want) {
		t.Fatalf("bodies received:\n%v\nwant:\n%v", got, want)
	}
}

// runSample runs a documentation sample, given on stdin, with the program
// bin and args, against the schema of dsn (DATABASE_URL, in libpq's form).
func runSample(t *testing.T, dsn, sample, bin string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(sample)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+libpqURL(t, dsn),
		"NODE_PATH="+filepath.Join(testenv.Root(), ".services", "node", "node_modules"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s sample failed: %v\n%s\nsample:\n%s", filepath.Base(bin), err, out, sample)
	}
}

// libpqURL turns dsn's search_path parameter (pgx's) into libpq's
// options=-csearch_path=..., which psql, psycopg2 and node-postgres read.
func libpqURL(t *testing.T, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	if sp := q.Get("search_path"); sp != "" {
		q.Del("search_path")
		q.Set("options", "-csearch_path="+sp)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// The samples' clients are installed by `make up` (scripts/services.sh):
// a missing one fails the test, naming the fix.
func psqlBin(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("psql"); err == nil {
		return p
	}
	t.Fatal("psql not found: run `make up` (scripts/services.sh installs postgresql)")
	return ""
}

func pythonBin(t *testing.T) string {
	t.Helper()
	// Debian's interpreter: python3-psycopg2 is installed for it, not for
	// a pyenv or venv python3 earlier on PATH.
	bin := "/usr/bin/python3"
	if err := exec.Command(bin, "-c", "import psycopg2").Run(); err != nil {
		t.Fatalf("%s cannot import psycopg2 (%v): run `make up` (scripts/services.sh installs python3-psycopg2)", bin, err)
	}
	return bin
}

func nodeBin(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found: install Node.js (the README's Node sample runs with it)")
	}
	if _, err := os.Stat(filepath.Join(testenv.Root(), ".services", "node", "node_modules", "pg", "package.json")); err != nil {
		t.Fatalf("node-postgres missing (%v): run `make up` (scripts/services.sh runs npm install pg into .services/node)", err)
	}
	return p
}

// runGoSample compiles the README's Go fragment into a program (its import
// lines hoisted, ctx and pool provided, err checked) in a module of its
// own that uses this checkout, and runs it against dsn.
func runGoSample(t *testing.T, sample, dsn string) {
	t.Helper()
	var imports, body []string
	for _, line := range strings.Split(sample, "\n") {
		if strings.HasPrefix(line, "import ") {
			imports = append(imports, strings.TrimPrefix(line, "import "))
		} else {
			body = append(body, line)
		}
	}
	src := "package main\n\nimport (\n\t\"context\"\n\t\"log\"\n\t\"os\"\n\n\t\"github.com/jackc/pgx/v5\"\n\t\"github.com/jackc/pgx/v5/pgxpool\"\n\t" +
		strings.Join(imports, "\n\t") + "\n)\n\nfunc main() {\n\tctx := context.Background()\n" +
		"\tpool, err := pgxpool.New(ctx, os.Getenv(\"SAMPLE_DATABASE_URL\"))\n\tif err != nil {\n\t\tlog.Fatal(err)\n\t}\n\tdefer pool.Close()\n\t_ = pgx.ErrNoRows\n" +
		strings.Join(body, "\n") + "\n\tif err != nil {\n\t\tlog.Fatal(err)\n\t}\n}\n"
	src = strings.Replace(src, "\nerr := pgx.BeginFunc", "\nerr = pgx.BeginFunc", 1)
	dir, err := os.MkdirTemp("", "adoptcli-readme-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	root := testenv.Root()
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	mod := strings.Replace(string(gomod), "module github.com/outboxrelay/outboxrelay", "module readmesample", 1) +
		"\nrequire github.com/outboxrelay/outboxrelay v0.0.0\n\nreplace github.com/outboxrelay/outboxrelay => " + root + "\n"
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"go.mod": []byte(mod), "go.sum": sum, "main.go": []byte(src)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", "-mod=mod", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SAMPLE_DATABASE_URL="+dsn, "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the README's Go sample failed: %v\n%s\nprogram:\n%s", err, out, src)
	}
}
