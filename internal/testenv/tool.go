package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// Tool returns the path of a program a test runs (psql, prometheus,
// systemd-analyze). Missing, it skips the test, or fails it under CI=true,
// where a check that did not run must not pass; install says how to get it.
func Tool(t testing.TB, name, install string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err == nil {
		return bin
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found (%s); CI=true makes this a failure", name, install)
	}
	t.Skipf("%s not found (%s)", name, install)
	return ""
}
