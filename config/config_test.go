package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadPrecedence(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "relay.yaml")
	yaml := "database_url: postgres://file@db/x\namqp_url: [amqp://a/, amqp://b/]\nbatch_size: 100\nworkers: 3\npoll_interval: 2s\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := Flags("test")
	if err := fs.Parse([]string{"--config", file, "--workers", "5"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(fs, []string{"RELAY_BATCH_SIZE=250", "RELAY_WORKERS=4", "OTHER=1"}, KeyDatabaseURL, KeyAMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	if c.DatabaseURL != "postgres://file@db/x" {
		t.Errorf("database_url from file: got %q", c.DatabaseURL)
	}
	if strings.Join(c.AMQPURLs, " ") != "amqp://a/ amqp://b/" {
		t.Errorf("amqp_url list from file: got %q", c.AMQPURLs)
	}
	if c.BatchSize != 250 {
		t.Errorf("environment should beat the file: batch_size %d", c.BatchSize)
	}
	if c.Workers != 5 {
		t.Errorf("flag should beat the environment: workers %d", c.Workers)
	}
	if c.PollInterval != 2*time.Second {
		t.Errorf("poll_interval from file: %s", c.PollInterval)
	}
	if c.ConfirmTimeout != 30*time.Second || c.LogFormat != "json" {
		t.Errorf("defaults not applied: %+v", c)
	}
}

func TestLoadErrorsNameTheKeyAndHideSecrets(t *testing.T) {
	t.Parallel()
	base := []string{"RELAY_DATABASE_URL=postgres://u:s3cret@h/db", "RELAY_AMQP_URL=amqp://u:s3cret@h/"}
	cases := []struct {
		env  []string
		want string
	}{
		{[]string{"RELAY_BATCH_SIZE=abc"}, `config: batch_size (from RELAY_BATCH_SIZE): must be a whole number, got "abc"`},
		{[]string{"RELAY_BATCH_SIZE=1.5"}, "batch_size (from RELAY_BATCH_SIZE): must be a whole number"},
		{[]string{"RELAY_WORKERS=0"}, "workers (from RELAY_WORKERS): must be between 1 and 64, got 0"},
		{[]string{"RELAY_CONFIRM_TIMEOUT=10"}, "confirm_timeout (from RELAY_CONFIRM_TIMEOUT): must be a duration"},
		{[]string{"RELAY_LOG_FORMAT=xml"}, "log_format (from RELAY_LOG_FORMAT): must be one of json, text"},
		{[]string{"RELAY_AMQP_URL=http://u:s3cret@h/"}, "amqp_url (from RELAY_AMQP_URL): must be amqp:// or amqps:// URLs with a host, got http://u:xxxxx@h/"},
		{[]string{"RELAY_DATABASE_URL=postgres://u:s3cret@/db"}, "database_url (from RELAY_DATABASE_URL): must be a postgres:// URL with a host, got postgres://u:xxxxx@/db"},
		{[]string{"RELAY_RETRY_BASE=10m", "RELAY_RETRY_MAX=1m"}, "retry_max: must be at least retry_base"},
		{[]string{"RELAY_DATABASE_URL="}, "database_url: is required"},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			t.Parallel()
			_, err := Load(nil, append(append([]string{}, base...), tc.env...), KeyDatabaseURL, KeyAMQPURL)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error must be one line without secrets: %q", err)
			}
		})
	}
}

func TestLoadRejectsUnknownFileKeys(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "relay.yaml")
	if err := os.WriteFile(file, []byte("batchsize: 10\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := Flags("test")
	if err := fs.Parse([]string{"--config", file}); err != nil {
		t.Fatal(err)
	}
	_, err := Load(fs, nil)
	if err == nil || !strings.Contains(err.Error(), `unknown key "batchsize"`) {
		t.Fatalf("got %v, want an unknown key error", err)
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"postgres://u:pw@h:5432/db?sslmode=disable": "postgres://u:xxxxx@h:5432/db?sslmode=disable",
		"amqp://guest@h/":             "amqp://guest@h/",
		"postgres://h/db?password=pw": "postgres://h/db?password=xxxxx",
		"::not a url pw":              "<unparseable URL>",
	}
	for in, want := range cases {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add("500", "1s", "postgres://u:p@h/db")
	f.Add("x", "-1s", "::")
	f.Fuzz(func(t *testing.T, batch, poll, dbURL string) {
		c, err := Load(nil, []string{"RELAY_BATCH_SIZE=" + batch, "RELAY_POLL_INTERVAL=" + poll, "RELAY_DATABASE_URL=" + dbURL, "RELAY_AMQP_URL=amqp://h/"})
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error: %q", err)
			}
			return
		}
		if c.BatchSize < 1 || c.PollInterval < time.Millisecond {
			t.Fatalf("accepted out-of-range values: %+v", c)
		}
	})
}
