package test

import (
	"context"
	"net/http"
	"os/exec"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/inbox"
	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// relayCmd runs the relay binary to completion with env added to a clean
// environment, returning its combined output and exit code.
func relayCmd(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.RelayBinary(t), args...)
	cmd.Env = append(testenv.CleanEnv(), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("relay %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return string(out), code
}

// startRelay starts `relay run` with env; unless the test kills it, it is
// stopped with SIGTERM when the test ends and must then exit 0.
func startRelay(t *testing.T, env ...string) *testenv.RelayProc {
	t.Helper()
	return testenv.StartRelayProc(t, env...)
}

// runConsumer runs c until the test ends.
func runConsumer(t *testing.T, c *inbox.Consumer) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- c.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-stopped; err != nil {
			t.Errorf("consumer: %v", err)
		}
	})
}

// status returns the HTTP status of path on the relay, or 0 if it does not
// answer.
func status(p *testenv.RelayProc, path string) int {
	resp, err := http.Get(p.URL() + path)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	return resp.StatusCode
}
