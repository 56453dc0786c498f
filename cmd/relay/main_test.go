package main

import (
	"context"
	"errors"
	"os"
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

// The relay's soft memory limit follows its cgroup's: the unit's own
// under systemd, the container's, cgroup v1's, and none for "max".
func TestMemoryLimitFromCgroup(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name  string
		files map[string]string
		want  int64
		ok    bool
	}{
		{"systemd unit", map[string]string{
			"/proc/self/cgroup": "0::/system.slice/relay.service\n",
			"/sys/fs/cgroup/system.slice/relay.service/memory.max": "268435456\n",
			"/sys/fs/cgroup/memory.max":                            "max\n",
		}, 241591905, true},
		{"container", map[string]string{"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "100000000\n"}, 90000000, true},
		{"no limit", map[string]string{"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "max\n"}, 0, false},
		{"cgroup v1", map[string]string{"/sys/fs/cgroup/memory/memory.limit_in_bytes": "1000\n"}, 900, true},
		{"cgroup v1, systemd unit", map[string]string{
			"/proc/self/cgroup": "4:memory:/system.slice/relay.service\n0::/\n",
			"/sys/fs/cgroup/memory/system.slice/relay.service/memory.limit_in_bytes": "2000\n",
			"/sys/fs/cgroup/memory/memory.limit_in_bytes":                            "9223372036854771712\n",
		}, 1800, true},
		{"cgroup v1, no limit", map[string]string{"/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"}, 0, false},
		{"no cgroup files", map[string]string{}, 0, false},
	} {
		read := func(name string) ([]byte, error) {
			if v, ok := c.files[name]; ok {
				return []byte(v), nil
			}
			return nil, os.ErrNotExist
		}
		if got, ok := memoryLimit(read); got != c.want || ok != c.ok {
			t.Errorf("%s: memoryLimit = %d, %t; want %d, %t", c.name, got, ok, c.want, c.ok)
		}
	}
}
