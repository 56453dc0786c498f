// Package testenv gives tests the real PostgreSQL and RabbitMQ they run
// against. It reads RELAY_TEST_* variables, or starts the services itself
// with scripts/services.sh. A missing service fails the test when CI=true
// and skips it (saying why) otherwise.
package testenv

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/migrations"
)

// Env holds the service URLs.
type Env struct {
	DatabaseURL   string
	AMQPURL       string
	ManagementURL string
	TLS           TLSEnv
}

// TLSEnv is the same services over TLS, with the test CA that signed their
// certificates (scripts/services/tls.sh). It is empty where the services
// have no TLS (docker mode); use RequireTLS.
type TLSEnv struct {
	// DatabaseURL verifies the server: sslmode=verify-full, sslrootcert.
	DatabaseURL string
	// AMQPURL is amqps:// with cacertfile, certfile and keyfile: the
	// listener requires a client certificate.
	AMQPURL string
	// CA, ClientCert and ClientKey are the PEM files' paths.
	CA, ClientCert, ClientKey string
}

// envVars maps each RELAY_TEST_* variable to the Env field it sets.
func envVars(e *Env) map[string]*string {
	return map[string]*string{
		"RELAY_TEST_DATABASE_URL":     &e.DatabaseURL,
		"RELAY_TEST_AMQP_URL":         &e.AMQPURL,
		"RELAY_TEST_MANAGEMENT_URL":   &e.ManagementURL,
		"RELAY_TEST_DATABASE_TLS_URL": &e.TLS.DatabaseURL,
		"RELAY_TEST_AMQPS_URL":        &e.TLS.AMQPURL,
		"RELAY_TEST_TLS_CA":           &e.TLS.CA,
		"RELAY_TEST_TLS_CLIENT_CERT":  &e.TLS.ClientCert,
		"RELAY_TEST_TLS_CLIENT_KEY":   &e.TLS.ClientKey,
	}
}

var (
	once   sync.Once
	env    Env
	envErr error
)

// Root returns the repository root: the folder holding the go.mod of
// module github.com/outboxrelay/outboxrelay (deploy/ has a go.mod of its
// own). Tests in parallel ask at once: it is worked out once.
func Root() string { return root() }

var root = sync.OnceValue(func() string {
	dir, _ := os.Getwd()
	for {
		mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(mod), "module github.com/outboxrelay/outboxrelay\n") {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			panic("testenv: the go.mod of github.com/outboxrelay/outboxrelay is not above the working directory")
		}
		dir = parent
	}
})

func load() (Env, error) {
	var e Env
	vars := envVars(&e)
	for k, v := range vars {
		*v = os.Getenv(k)
	}
	if e.DatabaseURL != "" && e.AMQPURL != "" {
		return e, nil
	}
	cmd := servicesScript("up")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return e, fmt.Errorf("scripts/services.sh up: %v\n%s%s", err, stderr.String(), startHint)
	}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "=")
		if !ok {
			continue
		}
		if field, ok := vars[k]; ok {
			*field = strings.Trim(v, `'"`)
		}
	}
	if e.DatabaseURL == "" || e.AMQPURL == "" {
		return e, fmt.Errorf("scripts/services.sh up printed no service URLs:\n%s", stdout.String())
	}
	return e, nil
}

// startHint ends every "services unavailable" failure.
const startHint = "start the services with `make up` (it installs PostgreSQL and RabbitMQ when missing), or run `make test`; " +
	"to skip the tests that need them instead, set " + skipVar + "=1 (ignored when CI=true)"

// skipVar is the opt-out: tests that need services skip instead of failing
// when they are missing.
const skipVar = "RELAY_TEST_SKIP_WITHOUT_SERVICES"

// servicesScript is scripts/services.sh with args. Tests only start what is
// installed: the script refuses to install packages when called from here.
func servicesScript(args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(Root(), "scripts", "services.sh"), args...)
	cmd.Env = append(os.Environ(), "SERVICES_NO_INSTALL=1")
	return cmd
}

// Services returns the service URLs, starting the installed services if
// they are not running. Missing services fail the test, unless
// RELAY_TEST_SKIP_WITHOUT_SERVICES=1 (and CI is not true) makes it skip.
// Under -short every test that needs services skips: -short runs the unit
// tests alone (the decision tables), on a machine with no services.
func Services(t testing.TB) Env {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no services")
	}
	once.Do(func() { env, envErr = load() })
	if envErr != nil {
		if os.Getenv(skipVar) == "1" && os.Getenv("CI") != "true" {
			t.Skipf("services unavailable (%s=1): %v", skipVar, envErr)
		}
		t.Fatalf("services unavailable: %v", envErr)
	}
	return env
}

// RequireTLS returns the TLS services. Where they are missing (services
// started by hand, or docker mode) it fails the test like a missing
// service: it skips only with RELAY_TEST_SKIP_WITHOUT_SERVICES=1 and CI not
// true.
func RequireTLS(t testing.TB) TLSEnv {
	t.Helper()
	e := Services(t).TLS
	if e.DatabaseURL != "" && e.AMQPURL != "" && e.CA != "" && e.ClientCert != "" && e.ClientKey != "" {
		return e
	}
	const why = "TLS services unavailable: RELAY_TEST_DATABASE_TLS_URL, RELAY_TEST_AMQPS_URL and RELAY_TEST_TLS_* are not all set " +
		"(scripts/services.sh up sets them up in local mode; re-source .services/env)"
	if os.Getenv(skipVar) == "1" && os.Getenv("CI") != "true" {
		t.Skipf("%s (%s=1)", why, skipVar)
	}
	t.Fatalf("%s; %s", why, startHint)
	return TLSEnv{}
}

// MustServices is Services for examples and TestMain, which have no t.
func MustServices() Env {
	once.Do(func() { env, envErr = load() })
	if envErr != nil {
		panic(envErr)
	}
	return env
}

// Name returns a short unique name with the given prefix, usable as a
// schema, queue or exchange name.
func Name(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

// WithSearchPath returns databaseURL pinned to schema.
func WithSearchPath(databaseURL, schema string) string {
	u, err := url.Parse(databaseURL)
	if err != nil {
		panic(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// NewSchema creates an empty schema, migrated unless bare is set, dropped
// when the test ends, and returns a database URL whose search_path is it.
func NewSchema(t testing.TB, migrate bool) string {
	t.Helper()
	e := Services(t)
	schema := Name("t")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, e.DatabaseURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	dropAtEnd(t, e, schema)
	dsn := WithSearchPath(e.DatabaseURL, schema)
	if migrate {
		if _, err := migrations.Up(ctx, dsn); err != nil {
			t.Fatalf("migrate: %v", err)
		}
	}
	return dsn
}

// NewSchemaName returns a unique schema name that does not exist yet, for
// code under test to create; the schema is dropped, if it exists, when the
// test ends.
func NewSchemaName(t testing.TB) string {
	t.Helper()
	e := Services(t)
	name := Name("relay")
	dropAtEnd(t, e, name)
	return name
}

// dropAtEnd drops schema, if it exists, when the test ends.
func dropAtEnd(t testing.TB, e Env, schema string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := pgx.Connect(ctx, e.DatabaseURL)
		if err != nil {
			t.Errorf("cleanup connect: %v", err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
}

// CurrentSchema returns the current schema of a connection to dsn.
func CurrentSchema(t testing.TB, dsn string) string {
	t.Helper()
	var s string
	if err := Pool(t, dsn).QueryRow(context.Background(), "SELECT current_schema()").Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// Pool opens a pool on dsn, closed when the test ends.
func Pool(t testing.TB, dsn string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// AMQP opens a connection and a channel, closed when the test ends.
func AMQP(t testing.TB, amqpURL string) (*amqp.Connection, *amqp.Channel) {
	t.Helper()
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Fatalf("amqp dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("amqp channel: %v", err)
	}
	return conn, ch
}

// Queue declares a durable queue (quorum or classic) deleted when the test
// ends, and returns its name.
func Queue(t testing.TB, ch *amqp.Channel, quorum bool) string {
	t.Helper()
	name := Name("q")
	args := amqp.Table{}
	if quorum {
		args["x-queue-type"] = "quorum"
	}
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		t.Fatalf("declare queue: %v", err)
	}
	t.Cleanup(func() {
		e := Services(t)
		conn, err := amqp.Dial(e.AMQPURL)
		if err != nil {
			return
		}
		defer conn.Close()
		c, err := conn.Channel()
		if err != nil {
			return
		}
		_, _ = c.QueueDelete(name, false, false, false)
	})
	return name
}

// Consume collects deliveries from queue until want have arrived or the
// deadline passes, auto-acking them; it fails the test on timeout.
func Consume(t testing.TB, ch *amqp.Channel, queue string, want int, deadline time.Duration) []amqp.Delivery {
	t.Helper()
	if err := ch.Qos(1000, 0, false); err != nil {
		t.Fatalf("qos: %v", err)
	}
	tag := Name("c")
	deliveries, err := ch.Consume(queue, tag, false, false, false, false, nil)
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	defer func() { _ = ch.Cancel(tag, false) }()
	var got []amqp.Delivery
	timer := time.NewTimer(deadline)
	defer timer.Stop()
	for len(got) < want {
		select {
		case d, ok := <-deliveries:
			if !ok {
				t.Fatalf("consumer closed after %d of %d messages", len(got), want)
			}
			_ = d.Ack(false)
			got = append(got, d)
		case <-timer.C:
			t.Fatalf("received %d of %d messages within %s", len(got), want, deadline)
		}
	}
	return got
}

// Eventually polls cond until it holds or the deadline passes. It is for
// conditions held in another process (a row in the database, a queue
// depth), which offer nothing to wait on.
func Eventually(t testing.TB, deadline time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	end := time.Now().Add(deadline)
	wait := 5 * time.Millisecond
	for {
		ok, err := cond()
		if ok {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("timed out after %s waiting for %s (last error: %v)", deadline, what, err)
		}
		time.Sleep(wait)
		wait = min(wait*2, 200*time.Millisecond)
	}
}

// ExampleDatabase gives a runnable example (which has no *testing.T) a
// migrated schema of its own; done drops it. It panics when the services
// cannot be had.
func ExampleDatabase(ctx context.Context) (pool *pgxpool.Pool, done func()) {
	env := MustServices()
	schema := Name("example")
	admin, err := pgx.Connect(ctx, env.DatabaseURL)
	if err != nil {
		panic(err)
	}
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		panic(err)
	}
	dsn := WithSearchPath(env.DatabaseURL, schema)
	if _, err := migrations.Up(ctx, dsn); err != nil {
		panic(err)
	}
	if pool, err = pgxpool.New(ctx, dsn); err != nil {
		panic(err)
	}
	return pool, func() {
		pool.Close()
		_, _ = admin.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
		_ = admin.Close(ctx)
	}
}

// ConsumeDistinct consumes queue (auto-ack) until n distinct message ids
// have arrived and returns them in order of first arrival; later copies
// (duplicates) are skipped.
func ConsumeDistinct(t testing.TB, ch *amqp.Channel, queue string, n int, deadline time.Duration) []string {
	t.Helper()
	if err := ch.Qos(2000, 0, false); err != nil {
		t.Fatalf("qos: %v", err)
	}
	tag := Name("c")
	deliveries, err := ch.Consume(queue, tag, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	defer func() { _ = ch.Cancel(tag, false) }()
	seen := make(map[string]bool, n)
	order := make([]string, 0, n)
	timer := time.NewTimer(deadline)
	defer timer.Stop()
	for len(order) < n {
		select {
		case d, ok := <-deliveries:
			if !ok {
				t.Fatalf("consumer closed after %d of %d messages", len(order), n)
			}
			if !seen[d.MessageId] {
				seen[d.MessageId] = true
				order = append(order, d.MessageId)
			}
		case <-timer.C:
			t.Fatalf("%d of %d distinct messages arrived within %s", len(order), n, deadline)
		}
	}
	return order
}

// LedgerTable is the table Ledger keeps.
const LedgerTable = "outbox_ledger"

// Ledger keeps, in the schema of pool, a copy of every outbox row's
// message id, id and ordering key as it commits (an AFTER INSERT trigger,
// so the id is the one the row got and a rolled-back insert leaves no
// entry). A relay with retention: none deletes what it publishes; the
// ledger is what a test then judges deliveries and order against.
func Ledger(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `
CREATE TABLE `+LedgerTable+` (message_id uuid NOT NULL, id bigint NOT NULL, ordering_key text);
CREATE FUNCTION outbox_ledger_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO `+LedgerTable+` SELECT n.message_id, n.id, n.ordering_key FROM new_rows n;
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_ledger_note AFTER INSERT ON outbox REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_ledger_note();`); err != nil {
		t.Fatalf("ledger: %v", err)
	}
}

// OrderViolations judges arrivals (message ids in order of first arrival)
// against the outbox: for each ordering key, a message whose row id is
// lower than one already seen for its key is a violation. It also returns
// how many keys it judged.
func OrderViolations(t testing.TB, pool *pgxpool.Pool, arrivals []string) (violations, keys int) {
	t.Helper()
	return OrderViolationsIn(t, pool, "outbox", arrivals)
}

// OrderViolationsIn is OrderViolations against table, the outbox or its
// Ledger.
func OrderViolationsIn(t testing.TB, pool *pgxpool.Pool, table string, arrivals []string) (violations, keys int) {
	t.Helper()
	type row struct {
		id  int64
		key string
	}
	rows, err := pool.Query(context.Background(),
		`SELECT message_id::text, id, ordering_key FROM `+table+` WHERE ordering_key IS NOT NULL`)
	if err != nil {
		t.Fatal(err)
	}
	byMsg := map[string]row{}
	var m string
	var r row
	if _, err := pgx.ForEachRow(rows, []any{&m, &r.id, &r.key}, func() error {
		byMsg[m] = r
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return orderViolations(arrivals, func(m string) (string, int64, bool) {
		r, ok := byMsg[m]
		return r.key, r.id, ok
	}, nil)
}
