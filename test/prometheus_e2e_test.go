package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.yaml.in/yaml/v3"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// The shipped dashboard and rules work on a real Prometheus: loaded with
// the rules, it scrapes a relay and an inbox consumer during a short drain
// with a dead row; every dashboard panel's expression and every recording
// rule return data through the HTTP API, and the dead-rows alert is pending
// or firing.
func TestDashboardAndRulesOnARealPrometheus(t *testing.T) {
	t.Parallel()
	bin := testenv.Tool(t, "prometheus", "make rules installs Debian's package")
	env := testenv.Services(t)
	dsn := testenv.NewSchema(t, true)
	pool := testenv.Pool(t, dsn)
	_, ch := testenv.AMQP(t, env.AMQPURL)
	ctx := context.Background()

	topo := inbox.Topology{Exchange: testenv.Name("dash"), Queue: testenv.Name("dash"), BindingKeys: []string{"k"}}
	if err := inbox.DeclareTopology(ctx, ch, topo); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteTopology(t, env.AMQPURL, topo) })
	msgs := []outbox.Message{{Exchange: testenv.Name("missing"), RoutingKey: "k", Payload: []byte(`{}`)}} // dead at once
	for i := range 2000 {
		msgs = append(msgs, outbox.Message{Exchange: topo.Exchange, RoutingKey: "k", Payload: fmt.Appendf(nil, `{"i":%d}`, i)})
	}
	if _, err := outbox.Enqueue(ctx, pool, msgs...); err != nil {
		t.Fatal(err)
	}
	relay := startRelay(t, "RELAY_DATABASE_URL="+dsn, "RELAY_AMQP_URL="+env.AMQPURL,
		"RELAY_MAX_ATTEMPTS=1", "RELAY_STATS_INTERVAL=200ms")

	reg := prometheus.NewRegistry()
	consumer, err := inbox.New(inbox.Config{
		Queue: topo.Queue, Name: "dash", DB: pool, AMQPURLs: []string{env.AMQPURL}, Concurrency: 4,
		Handler:    func(context.Context, pgx.Tx, inbox.Message) error { return nil },
		Registerer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	runConsumer(t, consumer)
	inboxSrv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(inboxSrv.Close)

	prom := startPrometheus(t, bin, hostOf(t, relay.URL()), hostOf(t, inboxSrv.URL))

	testenv.Eventually(t, 2*time.Minute, "the dead-rows alert pending or firing", func() (bool, error) {
		var alerts struct {
			Alerts []struct {
				Labels map[string]string
				State  string
			}
		}
		if err := promGet(prom, "/api/v1/alerts", nil, &alerts); err != nil {
			return false, err
		}
		for _, a := range alerts.Alerts {
			if a.Labels["alertname"] == "OutboxRelayDeadRows" && (a.State == "pending" || a.State == "firing") {
				return true, nil
			}
		}
		return false, nil
	})
	for _, expr := range append(dashboardExprs(t), ruleExprs(t)...) {
		testenv.Eventually(t, time.Minute, "data for "+expr, func() (bool, error) {
			n, err := promQuery(prom, expr)
			return n > 0, err
		})
	}
	testenv.Eventually(t, time.Minute, "outboxrelay_relay_ready 1 and the inbox's applied rows", func() (bool, error) {
		ready, err := promQuery(prom, `outboxrelay_relay_ready == 1`)
		if err != nil {
			return false, err
		}
		applied, err := promQuery(prom, `outboxrelay_inbox_processed_total{consumer="dash"} == 2000`)
		return ready == 1 && applied == 1, err
	})
}

// startPrometheus runs Debian's prometheus on a free loopback port with
// the shipped rules, scraping the relay (job outbox-relay) and the inbox
// (job outbox-inbox) every second, and returns its base URL.
func startPrometheus(t *testing.T, bin, relayHost, inboxHost string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "obs-prometheus-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	rules, err := filepath.Abs(filepath.Join(testenv.Root(), "deploy", "prometheus", "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - {job_name: outbox-relay, static_configs: [{targets: [%q]}]}
  - {job_name: outbox-inbox, static_configs: [{targets: [%q]}]}
`, rules, relayHost, inboxHost)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	logs := &testenv.LogBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	t.Cleanup(func() { // runs after StartProcess's: the logs are complete
		if t.Failed() {
			t.Logf("prometheus logs:\n%s", logs.String())
		}
	})
	done := testenv.StartProcess(t, cmd, 30*time.Second)
	base := "http://" + addr
	testenv.Eventually(t, time.Minute, "prometheus ready", func() (bool, error) {
		select {
		case <-done:
			return false, fmt.Errorf("prometheus exited:\n%s", logs.String())
		default:
		}
		resp, err := http.Get(base + "/-/ready")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	return base
}

// promGet fetches an API path and decodes its data field into out.
func promGet(base, path string, q url.Values, out any) error {
	resp, err := http.Get(base + path + "?" + q.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string
		Error  string
		Data   json.RawMessage
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return err
	}
	if body.Status != "success" {
		return fmt.Errorf("%s: %s", path, body.Error) // a bad expression: shown when the wait times out
	}
	return json.Unmarshal(body.Data, out)
}

// promQuery runs an instant query and returns how many series it gave.
func promQuery(base, expr string) (int, error) {
	var data struct{ Result []json.RawMessage }
	err := promGet(base, "/api/v1/query", url.Values{"query": {expr}}, &data)
	return len(data.Result), err
}

// dashboardExprs are the expressions of every panel of the shipped
// Grafana dashboard.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(testenv.Root(), "deploy", "grafana", "dashboards", "outboxrelay.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	if len(exprs) == 0 {
		t.Fatal("the dashboard has no panel expressions")
	}
	return exprs
}

// ruleExprs are the expressions of every recording rule, and the series
// each records.
func ruleExprs(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(testenv.Root(), "deploy", "prometheus", "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct{ Record, Expr string }
		}
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				exprs = append(exprs, r.Expr, r.Record)
			}
		}
	}
	if len(exprs) == 0 {
		t.Fatal("rules.yml has no recording rules")
	}
	return exprs
}

func hostOf(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}
