package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/outboxrelay/outboxrelay/config"
)

// checkEnvNames fails for each RELAY_* name that config does not read, with
// the closest key config suggests. Names of other programs pass.
func checkEnvNames(t *testing.T, where string, names []string) {
	t.Helper()
	environ := make([]string, len(names))
	for i, n := range names {
		environ[i] = n + "="
	}
	for _, u := range config.UnknownEnv(environ) {
		hint := ""
		if u[1] != "" {
			hint = " (did you mean " + u[1] + "?)"
		}
		t.Errorf("%s: %s is not a configuration variable%s", where, u[0], hint)
	}
}

// mentioned matches a RELAY_* variable name anywhere in a text, comments
// included: a commented-out suggestion must be right too.
var mentioned = regexp.MustCompile(`\bRELAY_[A-Z0-9_]+\b`)

// TestEveryMentionedVariableIsAKey scans the deployment files as text, so
// that names in comments, in shell lines and in files no parser below
// reads are checked as well.
func TestEveryMentionedVariableIsAKey(t *testing.T) {
	t.Parallel()
	files := []string{"../Dockerfile", "../docker-compose.yml"}
	for _, pattern := range []string{"kubernetes/*.yaml", "systemd/*"} {
		files = append(files, glob(t, pattern)...)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		checkEnvNames(t, f, mentioned.FindAllString(string(b), -1))
	}
}

// glob is filepath.Glob that fails the test when nothing matches: a moved
// folder must not turn a check into a pass over nothing.
func glob(t *testing.T, pattern string) []string {
	t.Helper()
	m, err := filepath.Glob(pattern)
	if err != nil {
		t.Fatal(err)
	}
	if len(m) == 0 {
		t.Fatalf("no file matches %s", pattern)
	}
	return m
}
