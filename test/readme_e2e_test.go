package test

import (
	"context"
	"io"
	"log/slog"
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

// The documentation's insert samples run as written (the README's plain SQL
// through pgx and its Go sample compiled and run as a program, and the
// AMQP-properties insert of docs/design.md) against a migrated schema with
// the demo's orders table, and the relay publishes what they wrote with
// what the demo's consumer needs (order_id, total_cents).
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
	samples := docSection(t, "README.md", "Inserting with plain SQL", "sql")
	samples = append(samples, docSection(t, "docs/design.md", "AMQP properties", "sql")...)
	for _, sql := range samples {
		if _, err := pool.Exec(ctx, own.Replace(sql)); err != nil {
			t.Fatalf("SQL sample failed: %v\n%s", err, sql)
		}
	}
	runGoSample(t, own.Replace(docSection(t, "README.md", "Inserting from Go", "go")[0]), dsn)

	var orders int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM orders`).Scan(&orders); err != nil || orders != 2 {
		t.Fatalf("orders: %d rows (err %v), want the 2 the samples wrote", orders, err)
	}
	// What the demo's consumer requires of an order.
	var complete int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE exchange = $1
		AND convert_from(payload, 'UTF8')::jsonb ?& array['order_id', 'total_cents']`, exchange).Scan(&complete); err != nil || complete != 3 {
		t.Fatalf("%d outbox rows with order_id and total_cents (err %v), want the 3 the samples wrote", complete, err)
	}
	_, ch := testenv.AMQP(t, env.AMQPURL)
	if err := ch.ExchangeDeclare(exchange, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err) // a topic exchange, as the demo's consumer declares "orders"
	}
	queue := testenv.Queue(t, ch, false)
	if err := ch.QueueBind(queue, "order.created", exchange, false, nil); err != nil {
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
	// Published means confirmed and routed (mandatory): the rows reached
	// the bound queue.
	testenv.Eventually(t, 30*time.Second, "the samples' rows to be published", func() (bool, error) {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NOT NULL`).Scan(&n)
		return n == 3, err
	})
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
