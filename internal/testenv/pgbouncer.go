package testenv

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// StartPgBouncer runs a PgBouncer in transaction pooling mode in front of
// the test database (installing Debian's package if needed), with one
// database alias whose server connections use search_path schema, and
// returns a URL to it. PgBouncer 1.18 keeps no prepared statements across
// transactions, so the URL asks pgx for unnamed statements
// (default_query_exec_mode=exec), as docs/operations.md tells users to. It is
// stopped when the test ends.
func StartPgBouncer(t testing.TB, schema string) string {
	t.Helper()
	e := Services(t)
	bin := strings.TrimSpace(ServicesCmd(t, "pgbouncer-bin"))
	server, err := url.Parse(e.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	user := server.User.Username()
	password, _ := server.User.Password()

	dir, err := os.MkdirTemp("", "pgbouncer")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	// PgBouncer refuses to run as root: as root, run it as postgres, which
	// must be able to read the configuration and write its log.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()

	ini := fmt.Sprintf(`[databases]
relay = host=%s port=%s dbname=%s connect_query='SET search_path TO %s'

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %s
pool_mode = transaction
default_pool_size = 4
max_client_conn = 200
logfile = %s
`, server.Hostname(), server.Port(), strings.TrimPrefix(server.Path, "/"), schema, port,
		filepath.Join(dir, "userlist.txt"), filepath.Join(dir, "pgbouncer.log"))
	files := map[string]string{
		"pgbouncer.ini": ini,
		"userlist.txt":  strconv.Quote(user) + " " + strconv.Quote(password) + "\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	args := []string{filepath.Join(dir, "pgbouncer.ini")}
	name := bin
	if os.Geteuid() == 0 {
		name, args = "setpriv", append([]string{"--reuid=postgres", "--regid=postgres", "--init-groups", bin}, args...)
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := os.Create(filepath.Join(dir, "stdout.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	done := StartProcess(t, cmd, 10*time.Second)

	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password),
		Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Path: "/relay",
		RawQuery: "sslmode=disable&default_query_exec_mode=exec"}
	bouncer := u.String()
	Eventually(t, 30*time.Second, "pgbouncer to answer", func() (bool, error) {
		select {
		case <-done:
			stdout, _ := os.ReadFile(filepath.Join(dir, "stdout.log"))
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			t.Fatalf("pgbouncer exited:\n%s\n%s", stdout, log)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, bouncer)
		if err != nil {
			return false, nil
		}
		defer conn.Close(ctx)
		var got string
		if err := conn.QueryRow(ctx, `SELECT current_schema()`).Scan(&got); err != nil {
			return false, nil
		}
		if got != schema {
			t.Fatalf("through pgbouncer current_schema() = %q, want %q", got, schema)
		}
		return true, nil
	})
	return bouncer
}
