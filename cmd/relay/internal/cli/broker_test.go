package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
)

// runInBackground starts `relay run` with env plus the HTTP address it
// returns; the channel gives its exit code and stderr.
type runResult struct {
	code   int
	stderr string
}

func runInBackground(t *testing.T, ctx context.Context, env []string) (string, <-chan runResult) {
	t.Helper()
	addr := freeAddr(t)
	done := make(chan runResult, 1)
	go func() {
		code, _, errOut := runMain(t, ctx, append(env, "RELAY_HTTP_ADDR="+addr), "run")
		done <- runResult{code, errOut}
	}()
	return addr, done
}

// get returns the status and body of http://addr/path, or an error.
func get(addr, path string) (int, string, error) {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// A broker that refuses the relay for good ends `relay run` after the
// start grace, as a refusing database does, with an error naming the
// broker, the reason and the fix, and no password; while it waits,
// /readyz says the same. Refusals: credentials the broker does not take;
// amqp:// to the broker's TLS port; amqps:// to its plain port; a port
// whose service speaks first and not AMQP (as SSH does).
func TestRunGivesUpWhenTheBrokerRefuses(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	plain, err := url.Parse(env.AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	tlsURL, err := url.Parse(testenv.RequireTLS(t).AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	password, _ := plain.User.Password()
	wrong := *plain
	wrong.User = url.UserPassword(plain.User.Username(), "wrong-pw-55120")
	toTLSPort := *plain
	toTLSPort.Host = tlsURL.Host
	toPlainPort := *tlsURL
	toPlainPort.Host = plain.Host
	ssh := speaksFirst(t, "SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
	toSSH := *plain
	toSSH.Host = ssh
	const notAMQP = ": the port answers, but not as an AMQP 0-9-1 broker (%s): check the host and port in amqp_url (5672 for amqp://, 5671 for amqps://)"
	for _, tc := range []struct {
		name, url, reason string
	}{
		{"wrong password", wrong.String(), plain.Host + `: the broker refuses the credentials (403 ACCESS_REFUSED: ` +
			`username or password not allowed): check the user and password in amqp_url; if they are right, the port may reach another broker`},
		{"amqp to the TLS port", toTLSPort.String(), tlsURL.Host + fmt.Sprintf(notAMQP, "frame size exceeds negotiated frame_max")},
		{"amqps to the plain port", toPlainPort.String(), plain.Host + ": the port does not speak TLS (first record does not look like a TLS handshake): " +
			"amqps:// needs the broker's TLS port (5671), amqp:// its plain one (5672)"},
		{"a service that speaks first", toSSH.String(), ssh + fmt.Sprintf(notAMQP, "frame size exceeds negotiated frame_max")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			addr, done := runInBackground(t, ctx, []string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + tc.url,
				"RELAY_RECONNECT_MIN=10ms", "RELAY_RECONNECT_MAX=500ms"})
			want := "relay: the broker refuses the relay: " + tc.reason
			var body string
			testenv.Eventually(t, 20*time.Second, "/readyz to say why", func() (bool, error) {
				code, b, err := get(addr, "/readyz")
				body = b
				if err == nil && code == http.StatusServiceUnavailable && b == "not ready: "+want+"\n" {
					return true, nil
				}
				return false, fmt.Errorf("/readyz: %d %q (%v)", code, b, err)
			})
			res := <-done
			lines := strings.Split(strings.TrimSuffix(res.stderr, "\n"), "\n")
			var last struct{ Level, Msg, Err string }
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || res.code != exitFailed ||
				last.Level != "ERROR" || last.Msg != "run failed" || last.Err != want {
				t.Fatalf("exit %d, last line %+v (%v); want exit %d and err %q\nstderr:\n%s", res.code, last, err, exitFailed, want, res.stderr)
			}
			for _, secret := range []string{"wrong-pw-55120", password} {
				if strings.Contains(res.stderr, secret) || strings.Contains(body, secret) {
					t.Errorf("a password was printed:\n%s\n%s", res.stderr, body)
				}
			}
		})
	}
}

// speaksFirst listens on loopback and greets each connection with
// banner, then reads until the peer leaves; it returns host:port.
func speaksFirst(t *testing.T, banner string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.WriteString(c, banner)
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// A broker that is only down (its port refuses connections) is waited for
// past the start grace, however long, and used once it is back.
func TestRunWaitsForABrokerThatIsDown(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	amqpURL, err := url.Parse(env.AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := testenv.NewProxy(t, amqpURL.Host, false)
	viaProxy := *amqpURL
	viaProxy.Host = proxy.Addr()
	ctx, cancel := context.WithCancel(context.Background())
	addr, done := runInBackground(t, ctx, []string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=" + viaProxy.String(),
		"RELAY_RECONNECT_MIN=10ms", "RELAY_RECONNECT_MAX=200ms"})
	defer func() {
		cancel()
		if res := <-done; res.code != exitOK {
			t.Errorf("relay run: exit %d\n%s", res.code, res.stderr)
		}
	}()
	start := time.Now()
	testenv.Eventually(t, time.Minute, "dial failures past the start grace", func() (bool, error) {
		_, metrics, err := get(addr, "/metrics")
		return err == nil && time.Since(start) > 2*relay.StartupGrace &&
			strings.Contains(metrics, "outboxrelay_relay_broker_dial_failures_total") &&
			!strings.Contains(metrics, "outboxrelay_relay_broker_dial_failures_total 0\n"), nil
	})
	select {
	case res := <-done:
		t.Fatalf("relay run ended while the broker was down: exit %d\n%s", res.code, res.stderr)
	default:
	}
	if code, body, err := get(addr, "/readyz"); err != nil || code != http.StatusServiceUnavailable ||
		body != fmt.Sprintf("not ready: %v\n", relay.ErrBrokerUnavailable) {
		t.Errorf("/readyz while the broker is down: %d %q (%v)", code, body, err)
	}
	proxy.SetUp(true)
	testenv.Eventually(t, 30*time.Second, "ready once the broker is back", func() (bool, error) {
		code, _, err := get(addr, "/readyz")
		return err == nil && code == http.StatusOK, nil
	})
}
