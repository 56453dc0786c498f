package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/coreos/go-systemd/v22/unit"
	"github.com/subosito/gotenv"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// TestSystemdUnits parses the units and checks what docs/operations.md promises:
// secrets from an EnvironmentFile, restarts on failure but not after a bad
// configuration, an unprivileged user, the hardening options, and the
// migrate step; the example environment files name configuration keys only.
func TestSystemdUnits(t *testing.T) {
	t.Parallel()
	relay := readUnit(t, "systemd/outboxrelay.service")
	want := map[string]string{
		"ExecStart": "/usr/local/bin/relay run", "EnvironmentFile": "/etc/outboxrelay/relay.env",
		"Restart": "on-failure", "RestartPreventExitStatus": "2", "DynamicUser": "yes",
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
	}
	checkDirectives(t, "outboxrelay.service", relay, "Service", want)
	checkDirectives(t, "outboxrelay.service", relay, "Unit", map[string]string{"Wants": "outboxrelay-migrate.service", "After": "outboxrelay-migrate.service"})
	migrate := readUnit(t, "systemd/outboxrelay-migrate.service")
	checkDirectives(t, "outboxrelay-migrate.service", migrate, "Service", map[string]string{
		"Type": "oneshot", "ExecStart": "/usr/local/bin/relay migrate", "EnvironmentFile": "/etc/outboxrelay/migrate.env",
		"DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
	})
	for _, f := range glob(t, "systemd/*.env.example") {
		env, err := readEnvFile(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		checkEnvNames(t, f, env)
	}
}

func readUnit(t *testing.T, path string) []*unit.UnitOption {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	opts, err := unit.DeserializeOptions(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return opts
}

// checkDirectives wants each name set to the value in section (for a
// directive given several times, one of them).
func checkDirectives(t *testing.T, where string, opts []*unit.UnitOption, section string, want map[string]string) {
	t.Helper()
	for name, value := range want {
		var got []string
		for _, o := range opts {
			if o.Section == section && o.Name == name {
				got = append(got, o.Value)
			}
		}
		if !slices.Contains(got, value) {
			t.Errorf("%s: [%s] %s=%s missing (has %q)", where, section, name, value, got)
		}
	}
}

// readEnvFile reads an EnvironmentFile's names with a dotenv parser (the
// files use the common subset of systemd's and dotenv's syntax).
func readEnvFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	env, err := gotenv.StrictParse(f)
	if err != nil {
		return nil, err
	}
	var names []string
	for k := range env {
		names = append(names, k)
	}
	return names, nil
}

// TestSystemdVerify runs systemd's own checker on the units: an unknown or
// misspelled directive, a bad value or a missing dependency is reported.
// The binary path is pointed at an existing executable, since
// systemd-analyze checks that ExecStart's program exists.
func TestSystemdVerify(t *testing.T) {
	t.Parallel()
	analyze := testenv.Tool(t, "systemd-analyze", "Debian package systemd")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var units []string
	for _, f := range glob(t, "systemd/*.service") {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, filepath.Base(f))
		if err := os.WriteFile(out, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/relay", exe)), 0o600); err != nil {
			t.Fatal(err)
		}
		units = append(units, out)
	}
	cmd := exec.Command(analyze, append([]string{"verify", "--man=no"}, units...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
