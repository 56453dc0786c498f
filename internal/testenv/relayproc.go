package testenv

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// build is one build of the relay binary, made once per test process.
type build struct {
	once sync.Once
	bin  string
	err  error
}

// builds holds the binary with the race detector (true) and without.
var builds = map[bool]*build{true: {}, false: {}}

// RelayBinary builds the relay once per test process and returns its
// path. It has the race detector when the test binary has it (tests), and
// not otherwise (benchmarks).
func RelayBinary(t testing.TB) string { return relayBinary(t, raceEnabled) }

func relayBinary(t testing.TB, race bool) string {
	t.Helper()
	b := builds[race]
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "relay-bin")
		if err != nil {
			b.err = err
			return
		}
		b.bin = filepath.Join(dir, "relay")
		args := []string{"build", "-o", b.bin}
		if race {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./cmd/relay")...)
		cmd.Dir = Root()
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if b.err != nil {
		t.Fatalf("build relay: %v", b.err)
	}
	return b.bin
}

// RelayProc is a `relay run` process.
type RelayProc struct {
	t       testing.TB
	env     []string
	plain   bool   // the binary as shipped, without the race detector
	bin     string // a relay binary built elsewhere (another commit's), or "" for this checkout's
	HTTP    string // base URL of its metrics and health endpoints
	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	exitErr error
	logs    LogBuffer
}

// StartRelayProc starts `relay run` with env (RELAY_* assignments) on a
// free HTTP port. When the test ends it is stopped with SIGTERM and must
// exit 0 (unless the test killed it).
func StartRelayProc(t testing.TB, env ...string) *RelayProc {
	t.Helper()
	return startRelayProc(t, &RelayProc{t: t, env: env})
}

// StartPlainRelayProc is StartRelayProc with the binary as shipped, built
// without the race detector even under `go test -race`: for tests that
// measure the process (memory), which the detector's shadow memory would
// multiply.
func StartPlainRelayProc(t testing.TB, env ...string) *RelayProc {
	t.Helper()
	return startRelayProc(t, &RelayProc{t: t, env: env, plain: true})
}

// StartRelayProcBin is StartRelayProc with the relay binary at bin, built
// from another commit: benchmarks run it beside this checkout's to compare
// the two in one run.
func StartRelayProcBin(t testing.TB, bin string, env ...string) *RelayProc {
	t.Helper()
	return startRelayProc(t, &RelayProc{t: t, env: env, bin: bin})
}

func startRelayProc(t testing.TB, p *RelayProc) *RelayProc {
	t.Helper()
	p.Start()
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("relay stop: %v\nlogs:\n%s", err, p.Logs())
		}
	})
	return p
}

// Start (re)starts the process after a Kill.
func (p *RelayProc) Start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		p.t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	p.HTTP = "http://" + addr
	bin := p.bin
	if bin == "" {
		bin = relayBinary(p.t, raceEnabled && !p.plain)
	}
	cmd := exec.Command(bin, "run")
	cmd.Env = append(CleanEnv(), append([]string{"RELAY_HTTP_ADDR=" + addr, "RELAY_LOG_FORMAT=json"}, p.env...)...)
	cmd.Stdout, cmd.Stderr = &p.logs, &p.logs
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start relay: %v", err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.exitErr = err
		p.mu.Unlock()
		close(done)
	}()
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *RelayProc) Kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Stop sends SIGTERM and returns an error unless the process exits 0
// within 60s. Stopping a killed process is a no-op.
func (p *RelayProc) Stop() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	select {
	case <-done:
		return nil // killed (or exited) already
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		return fmt.Errorf("no exit within 60s of SIGTERM")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exitErr != nil {
		return fmt.Errorf("exit after SIGTERM: %v", p.exitErr)
	}
	return nil
}

// Pid is the process id of the current process (after Start).
func (p *RelayProc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// URL is the base URL of the process's HTTP endpoints.
func (p *RelayProc) URL() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.HTTP
}

// Logs returns everything the process wrote so far.
func (p *RelayProc) Logs() string { return p.logs.String() }

// metricsClient reads /metrics uncompressed: a bench polls it every
// 200 ms during a drain, and the relay's gzip of each answer would be
// counted as its cost per message (a Prometheus scraping every 15 s costs
// it next to nothing).
var metricsClient = &http.Client{Transport: &http.Transport{DisableCompression: true}}

// Metric returns the value of an unlabelled metric line from /metrics, or
// "" if the relay does not answer or has no such line.
func (p *RelayProc) Metric(name string) string {
	resp, err := metricsClient.Get(p.URL() + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	for _, line := range strings.Split(buf.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// MetricSum returns the sum of every series of metric name (all label
// sets) from /metrics, and whether the relay answered and exposes it.
func (p *RelayProc) MetricSum(name string) (float64, bool) {
	resp, err := metricsClient.Get(p.URL() + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	sum, found := 0.0, false
	for _, line := range strings.Split(buf.String(), "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		fields := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(fields) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(fields[0], 64); err == nil {
			sum, found = sum+v, true
		}
	}
	return sum, found
}

// CleanEnv is the process environment without any RELAY_* variable.
func CleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RELAY_") {
			env = append(env, kv)
		}
	}
	return env
}

// ServicesCmd runs scripts/services.sh with args (for fault injection:
// rabbit-stop, rabbit-start, pg-restart, node-stop N, ...) and returns its
// standard output.
func ServicesCmd(t testing.TB, args ...string) string {
	t.Helper()
	stdout, _ := ServicesCmdLog(t, args...)
	return stdout
}

// ServicesCmdLog is ServicesCmd that also returns what the script logged
// (its standard error), for a test that reports how a step went.
func ServicesCmdLog(t testing.TB, args ...string) (stdout, log string) {
	t.Helper()
	cmd := servicesScript(args...)
	var out, errs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errs
	if err := cmd.Run(); err != nil {
		t.Fatalf("services.sh %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errs.String())
	}
	return out.String(), errs.String()
}
