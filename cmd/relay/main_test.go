package main

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// The binary's exit status is what a supervisor sees: `relay run` on a
// schema that was never migrated must exit non-zero, at once, saying what
// to do. (cmd/relay/internal/cli's tests cover the cases in process.)
func TestRunOnAnUnmigratedSchemaExitsNonZero(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.RelayBinary(t), "run")
	cmd.Env = append(testenv.CleanEnv(), "RELAY_DATABASE_URL="+testenv.NewSchema(t, false),
		"RELAY_AMQP_URL="+env.AMQPURL, "RELAY_HTTP_ADDR=")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("relay run: %v, want exit status 1; output:\n%s", err, out)
	}
	// The advice is `relay migrate`, or, when another schema in the shared
	// test database holds relay tables, which schema to point at instead.
	if !strings.Contains(string(out), "run `relay migrate`") && !strings.Contains(string(out), "set RELAY_SCHEMA=") {
		t.Errorf("output does not name relay migrate:\n%s", out)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("took %s", d)
	}
}
