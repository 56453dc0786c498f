package cli

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

func TestUnverifiedDatabaseHosts(t *testing.T) {
	t.Parallel()
	ca := testenv.UntrustedCA(t) // any readable CA file: only the settings are judged
	cases := []struct {
		dsn  string
		want []string
	}{
		{"postgres://u:p@db.example.com/app", []string{"db.example.com:5432"}}, // unset means prefer
		{"postgres://u:p@db.example.com/app?sslmode=disable", []string{"db.example.com:5432"}},
		{"postgres://u:p@db.example.com/app?sslmode=allow", []string{"db.example.com:5432"}},
		{"postgres://u:p@db.example.com:6432/app?sslmode=prefer", []string{"db.example.com:6432"}},
		{"postgres://u:p@10.0.0.5/app?sslmode=require", []string{"10.0.0.5:5432"}},
		{"host=db.example.com user=u sslmode=require", []string{"db.example.com:5432"}},
		{"postgres://u:p@db.example.com/app?sslmode=require&sslrootcert=" + ca, nil}, // verify-ca, as libpq does
		{"postgres://u:p@db.example.com/app?sslmode=verify-ca&sslrootcert=" + ca, nil},
		{"postgres://u:p@db.example.com/app?sslmode=verify-full&sslrootcert=" + ca, nil},
		{"postgres://u:p@db.example.com/app?sslmode=verify-full", nil}, // the system's CAs
		{"postgres://u:p@127.0.0.1/app?sslmode=disable", nil},
		{"postgres://u:p@localhost/app", nil},
		{"postgres://u:p@[::1]:5432/app?sslmode=disable", nil},
		{"host=/var/run/postgresql user=u", nil},
		{"postgres://u:p@127.0.0.1:5432,db.example.com:5433/app?sslmode=prefer", []string{"db.example.com:5433"}},
	}
	for _, tc := range cases {
		c, err := pgconn.ParseConfig(tc.dsn)
		if err != nil {
			t.Fatalf("%s: %v", tc.dsn, err)
		}
		if got := unverifiedDatabaseHosts(c); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.dsn, got, tc.want)
		}
	}
}

func TestPlainAMQPHosts(t *testing.T) {
	t.Parallel()
	urls := []string{
		"amqp://u:p@mq.example.com/", "amqps://u:p@mq2.example.com/", "amqp://u:p@127.0.0.1:5672/",
		"amqp://u:p@localhost/", "amqp://u:p@10.1.2.3:5673/vh", "not a url",
	}
	want := []string{"mq.example.com:5672", "10.1.2.3:5673"}
	if got := plainAMQPHosts(urls); !slices.Equal(got, want) {
		t.Errorf("%q, want %q", got, want)
	}
}

// `relay run` warns at start, once per side, naming the hosts and not
// the passwords, when it would talk to another machine without verifying
// it.
func TestRunWarnsAboutUnverifiedConnections(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr testenv.LogBuffer
	done := make(chan int, 1)
	go func() {
		// 192.0.2.0/24 is for documentation: nothing answers there, the
		// relay waits for the database until ctx ends.
		done <- Main(ctx, []string{"run"}, []string{
			"RELAY_DATABASE_URL=postgres://u:db-pw-3141@192.0.2.10:5432/app?sslmode=require",
			"RELAY_AMQP_URL=amqp://u:mq-pw-2718@192.0.2.11:5672/,amqps://u:mq-pw-2718@192.0.2.12:5671/",
			"RELAY_HTTP_ADDR=",
		}, &stdout, &stderr)
	}()
	const dbWarn, mqWarn = "database connections do not verify the server's certificate", "broker connections are not encrypted"
	defer func() {
		if t.Failed() {
			t.Log(stderr.String())
		}
	}()
	testenv.Eventually(t, 30*time.Second, "both warnings", func() (bool, error) {
		out := stderr.String()
		return strings.Contains(out, dbWarn) && strings.Contains(out, mqWarn), nil
	})
	cancel()
	if code := <-done; code != exitOK {
		t.Errorf("exit %d after cancel, want 0", code)
	}
	out := stderr.String()
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, dbWarn) && !strings.Contains(line, `"hosts":"192.0.2.10:5432"`) ||
			strings.Contains(line, mqWarn) && !strings.Contains(line, `"hosts":"192.0.2.11:5672"`) {
			t.Errorf("warning names the wrong hosts: %s", line)
		}
	}
	if strings.Count(out, dbWarn) != 1 || strings.Count(out, mqWarn) != 1 || strings.Contains(out, "-pw-") {
		t.Errorf("want each warning once and no password:\n%s", out)
	}
}
