package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
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
	if c.ConfirmTimeout != 5*time.Second || c.LogFormat != "json" {
		t.Errorf("defaults not applied: %+v", c)
	}
}

// Typed flags keep the order of sources: a boolean flag standing alone
// means true and beats the environment, a flag left unset leaves the
// environment's value (its empty default is not a value), and a bad flag
// value is reported by Load, naming the key, as from any other source.
func TestTypedFlagsKeepPrecedence(t *testing.T) {
	t.Parallel()
	env := []string{"RELAY_STRICT_ORDERING=false", "RELAY_POLL_INTERVAL=2s", "RELAY_BATCH_SIZE=40"}
	fs := Flags("test")
	if err := fs.Parse([]string{"--strict-ordering", "--poll-interval", "250ms"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(fs, env)
	if err != nil {
		t.Fatal(err)
	}
	if !c.StrictOrdering || c.PollInterval != 250*time.Millisecond {
		t.Errorf("flags should beat the environment: strict_ordering %v, poll_interval %s", c.StrictOrdering, c.PollInterval)
	}
	if c.BatchSize != 40 {
		t.Errorf("an unset --batch-size should leave the environment's 40, got %d", c.BatchSize)
	}
	fs = Flags("test")
	if err := fs.Parse([]string{"--strict-ordering=false", "--batch-size", "lots"}); err != nil {
		t.Fatalf("a flag's value is checked by Load, not by the parser: %v", err)
	}
	_, err = Load(fs, []string{"RELAY_STRICT_ORDERING=true"})
	if err == nil || err.Error() != `config: batch_size (from --batch-size): must be a whole number, got "lots"` {
		t.Fatalf("got %v, want the batch_size error from --batch-size", err)
	}
}

func TestSchemaIsTakenAsWritten(t *testing.T) {
	t.Parallel()
	fs := Flags("test")
	if err := fs.Parse([]string{"--schema", "Relay Ops"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(fs, []string{"RELAY_SCHEMA=ignored"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Schema != "Relay Ops" {
		t.Fatalf("schema: got %q, want the flag's value as written", c.Schema)
	}
	if c, err = Load(nil, nil); err != nil || c.Schema != "" {
		t.Fatalf("default schema: got %q, %v; want empty (the connection's current schema)", c.Schema, err)
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
		{[]string{"RELAY_AMQP_URL=http://u:s3cret@h/"}, `amqp_url (from RELAY_AMQP_URL): must be a URL with a host (amqp:// or amqps://), got "http://u:xxxxx@h/"`},
		{[]string{"RELAY_AMQP_URL=amqp://h/,amqp://u:s3,cret@h/"}, `amqp_url (from RELAY_AMQP_URL): URL 2 of 3 must be a URL with a host (amqp:// or amqps://), got "amqp://h/,amqp://u:xxxxx@h/"`},
		{[]string{"RELAY_AMQP_URL=amqp://u:/s3cret@h/"}, `has an '@' after the host: percent-encode '/', '?', '#' and '@' in the user name and password, got "amqp://u:xxxxx@h/"`},
		{[]string{"RELAY_DATABASE_URL=postgres://u:s3cret@/db"}, `database_url (from RELAY_DATABASE_URL): must be a URL with a host (postgres:// or postgresql://), got "postgres://u:xxxxx@/db"`},
		{[]string{"RELAY_DATABASE_URL=host=db user=app password=s3cret port=x"}, "database_url (from RELAY_DATABASE_URL): cannot parse `host=db user=app password=xxxxx port=x`: invalid port"},
		{[]string{"RELAY_DATABASE_URL=host=db password='s3 cret' sslmode=sometimes"}, "database_url (from RELAY_DATABASE_URL): cannot parse"},
		{[]string{"RELAY_DATABASE_URL=postgres://h/db?sslpassword=s3cret&sslmode=sometimes"}, "database_url (from RELAY_DATABASE_URL): cannot parse `postgres://h/db?sslpassword=xxxxx&sslmode=sometimes`"},
		{[]string{"RELAY_DATABASE_URL=app:s3cret@db:5432/orders"}, `must be a postgres:// URL or a key=value DSN, got "app:xxxxx@db:5432/orders"`},
		{[]string{"RELAY_LISTEN_DATABASE_URL=postgres://u:s3cret@h:x/db"}, `listen_database_url (from RELAY_LISTEN_DATABASE_URL): must be a URL with a host (postgres:// or postgresql://), got "postgres://u:xxxxx@h:x/db"`},
		// A URL pasted under the wrong key is still redacted.
		{[]string{"RELAY_BATCH_SIZE=postgres://u:s3cret@h/db"}, `batch_size (from RELAY_BATCH_SIZE): must be a whole number, got "postgres://u:xxxxx@h/db"`},
		// Control characters are escaped, so an error stays one line.
		{[]string{"RELAY_LOG_LEVEL=in\x1b[2Jfo\nx"}, `log_level (from RELAY_LOG_LEVEL): must be one of debug, info, warn, error, got "in\x1b[2jfo\nx"`},
		{[]string{"RELAY_RETRY_BASE=10m", "RELAY_RETRY_MAX=1m"}, "retry_max: must be at least retry_base"},
		{[]string{"RELAY_DATABASE_URL="}, "database_url: is required"},
		{[]string{"RELAY_SCHEMA=" + strings.Repeat("s", 57)}, "schema (from RELAY_SCHEMA): must be at most 56 bytes"},
		{[]string{"RELAY_SCHEMA=re\tlay"}, `schema (from RELAY_SCHEMA): must be printable UTF-8, got "re\tlay"`},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			t.Parallel()
			env := append([]string{}, base...)
			for _, kv := range tc.env {
				env = append(env, unescape(t, kv))
			}
			_, err := Load(nil, env, KeyDatabaseURL, KeyAMQPURL)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3") || strings.Contains(err.Error(), "cret") || strings.Contains(err.Error(), "\n") {
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

// unescape turns the \x1b and \n written in a test case into the bytes.
func unescape(t *testing.T, s string) string {
	t.Helper()
	if !strings.Contains(s, `\`) {
		return s
	}
	u, err := strconv.Unquote(`"` + s + `"`)
	if err != nil {
		t.Fatal(err)
	}
	return u
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

func TestLoadAcceptsKeyValueDSN(t *testing.T) {
	t.Parallel()
	dsn := "host=db port=5432 user=app password='hun ter2' dbname=orders sslmode=disable"
	c, err := Load(nil, []string{"RELAY_DATABASE_URL=" + dsn, "RELAY_AMQP_URL=amqp://h/"}, KeyDatabaseURL, KeyAMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	if c.DatabaseURL != dsn {
		t.Fatalf("database_url: got %q", c.DatabaseURL)
	}
}

func TestLoggerScrubsConfiguredSecrets(t *testing.T) {
	t.Parallel()
	c, err := Load(nil, []string{"RELAY_DATABASE_URL=host=db password=hunter2", "RELAY_AMQP_URL=amqp://u:s3cret@h/",
		"RELAY_LOG_FORMAT=text"}, KeyDatabaseURL, KeyAMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	var buf strings.Builder
	c.NewLogger(&buf).Warn("dial failed", "err", errors.New(`dial amqp://u:s3cret@h/: auth "hunter2"`))
	if out := buf.String(); strings.Contains(out, "s3cret") || strings.Contains(out, "hunter2") || !strings.Contains(out, "level=WARN") {
		t.Fatalf("log line: %s", out)
	}
}

// secretMarker is the password the fuzz target hides in configuration
// values; it must never come out.
const secretMarker = "S3CR3Tmk"

// FuzzSecretNeverEchoed puts a password, in each form a configuration
// value can carry one, under any key, through the environment, a YAML file
// or a flag, with arbitrary text around it, and checks that neither Load's
// error nor any log line of the loaded configuration contains it.
func FuzzSecretNeverEchoed(f *testing.F) {
	for form := range uint8(7) {
		for via := range uint8(3) {
			f.Add(uint8(0), via, form, "app", "", "db:5432/orders")
		}
	}
	f.Add(uint8(0), uint8(0), uint8(0), "u", "/x", "h")
	f.Add(uint8(0), uint8(0), uint8(3), "host=db", "", " port=x")
	f.Add(uint8(1), uint8(1), uint8(2), "h/db", "x#", "&sslmode=sometimes")
	f.Add(uint8(2), uint8(2), uint8(6), "amqp://h/", ",", "h")
	f.Add(uint8(3), uint8(0), uint8(5), "app", "\x1b[2J", "db\n")
	f.Fuzz(func(t *testing.T, keyIdx, via, form uint8, a, b, c string) {
		a, b, c = fuzzFiller(a), fuzzFiller(b), fuzzFiller(c)
		var value string
		switch form % 7 {
		case 0: // URL user info
			value = "postgres://" + a + ":" + secretMarker + b + "@" + c
		case 1: // password query parameter
			value = "postgres://" + a + "?" + b + "&password=" + secretMarker + c
		case 2: // sslpassword query parameter
			value = "postgres://" + a + "?" + b + "&sslpassword=" + secretMarker + c
		case 3: // key=value DSN
			value = a + " password=" + secretMarker + b + " " + c
		case 4: // key=value DSN, quoted password
			q := strings.NewReplacer("'", "", `\`, "")
			value = a + " password = '" + q.Replace(b) + secretMarker + q.Replace(c) + "'"
		case 5: // user:pass@host without a scheme
			value = a + ":" + secretMarker + b + "@" + c
		case 6: // second URL of a failover list
			value = c + ",amqp://" + a + ":" + secretMarker + b + "@h/"
		}
		k := keys[int(keyIdx)%len(keys)]
		environ := []string{"RELAY_DATABASE_URL=postgres://h/db", "RELAY_AMQP_URL=amqp://h/"}
		var fs *pflag.FlagSet
		switch via % 3 {
		case 0:
			environ = append(environ, "RELAY_"+strings.ToUpper(k.name)+"="+value)
		case 1:
			file := filepath.Join(t.TempDir(), "relay.yaml")
			if err := os.WriteFile(file, []byte(k.name+": "+yamlQuote(value)+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			fs = Flags("fuzz")
			if err := fs.Parse([]string{"--config", file}); err != nil {
				t.Fatal(err)
			}
			environ = environ[:0]
			if k.name != "database_url" {
				environ = append(environ, "RELAY_DATABASE_URL=postgres://h/db")
			}
			if k.name != "amqp_url" {
				environ = append(environ, "RELAY_AMQP_URL=amqp://h/")
			}
		case 2:
			fs = Flags("fuzz")
			if err := fs.Parse([]string{"--" + flagName(k.name) + "=" + value}); err != nil {
				t.Fatal(err)
			}
		}
		cfg, err := Load(fs, environ, KeyDatabaseURL, KeyAMQPURL)
		if err != nil {
			if strings.Contains(err.Error(), secretMarker) {
				t.Fatalf("%s=%q: error echoes the secret: %v", k.name, value, err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("%s=%q: multi-line error: %q", k.name, value, err)
			}
			return
		}
		var buf strings.Builder
		cfg.NewLogger(&buf).Error("connect failed",
			"err", fmt.Errorf("dial %s: refused", cfg.DatabaseURL),
			"database_url", cfg.DatabaseURL, "listen_database_url", cfg.ListenDatabaseURL,
			"amqp_url", cfg.AMQPURLs, "http_addr", cfg.HTTPAddr)
		if strings.Contains(buf.String(), secretMarker) {
			t.Fatalf("%s=%q: log line holds the secret: %s", k.name, value, buf.String())
		}
	})
}

// fuzzFiller keeps the fuzzer's text from moving the secret out of its
// password position: no "://" (which would start another URL of a list,
// making the secret a host), and valid UTF-8 (YAML carries nothing else).
func fuzzFiller(s string) string {
	s = strings.ToValidUTF8(s, "")
	for strings.Contains(s, "://") {
		s = strings.ReplaceAll(s, "://", ":/")
	}
	return s
}

// yamlQuote writes s as a YAML double-quoted scalar.
func yamlQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || (r >= 0x7f && r <= 0x9f) || r == 0x2028 || r == 0x2029 || r == 0xfeff || r >= 0xfffe:
			fmt.Fprintf(&b, `\U%08x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// Durations are text in both formats, never nanoseconds, with or without
// secrets to scrub.
func TestLoggerWritesDurationsAsText(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"json", "text"} {
		c, err := Load(nil, []string{"RELAY_LOG_FORMAT=" + format})
		if err != nil {
			t.Fatal(err)
		}
		var buf strings.Builder
		c.NewLogger(&buf).Warn("batch abandoned", "retry_in", 14624130426*time.Nanosecond, "wait", 1500*time.Microsecond)
		out := buf.String()
		want := `"retry_in":"14.624s"`
		if format == "text" {
			want = "retry_in=14.624s"
		}
		if !strings.Contains(out, want) || !strings.Contains(out, "1.5ms") || strings.Contains(out, "14624130426") {
			t.Errorf("%s log line %s: want %s and 1.5ms", format, out, want)
		}
	}
}

func TestUnknownEnvNamesTheClosestKey(t *testing.T) {
	t.Parallel()
	got := UnknownEnv([]string{"RELAY_BATCHSIZE=lots", "RELAY_WORKERS=2", "RELAY_DATABSE_URL=x", "RELAY_FOO=1",
		"RELAY_TEST_DATABASE_URL=x", "OTHER=1", "RELAY_LOGLEVEL=debug"})
	want := [][2]string{{"RELAY_BATCHSIZE", "RELAY_BATCH_SIZE"}, {"RELAY_DATABSE_URL", "RELAY_DATABASE_URL"},
		{"RELAY_FOO", ""}, {"RELAY_LOGLEVEL", "RELAY_LOG_LEVEL"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("UnknownEnv = %v, want %v", got, want)
	}
}

// One name per setting: every key's Config field is the key in Go's camel
// case (initialisms upper case), so a reader can follow a setting from the
// YAML key to the field. amqp_url is the one plural: it takes a list.
func TestEveryKeyNamesItsField(t *testing.T) {
	t.Parallel()
	initialisms := map[string]string{"url": "URL", "amqp": "AMQP", "http": "HTTP", "id": "ID"}
	fields := map[string]bool{}
	typ := reflect.TypeOf(Config{})
	for i := range typ.NumField() {
		fields[typ.Field(i).Name] = true
	}
	for _, k := range keys {
		var name strings.Builder
		for _, part := range strings.Split(k.name, "_") {
			if up, ok := initialisms[part]; ok {
				name.WriteString(up)
			} else {
				name.WriteString(strings.ToUpper(part[:1]) + part[1:])
			}
		}
		want := name.String()
		if k.name == "amqp_url" {
			want = "AMQPURLs"
		}
		if !fields[want] {
			t.Errorf("key %s: Config has no field %s", k.name, want)
		}
	}
}

// retention takes none (no published row kept) beside durations; 0 still
// keeps rows forever, and anything else is refused naming none.
func TestRetentionTakesNone(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		v    string
		none bool
		keep time.Duration
	}{{"none", true, 0}, {"NONE", true, 0}, {"0", false, 0}, {"2m", false, 2 * time.Minute}} {
		c, err := Load(nil, []string{"RELAY_DATABASE_URL=postgres://h/db", "RELAY_AMQP_URL=amqp://h/", "RELAY_RETENTION=" + tc.v})
		if err != nil || c.RetentionNone != tc.none || c.Retention != tc.keep {
			t.Errorf("retention %q: none %v, retention %v, err %v; want none %v, retention %v", tc.v, c.RetentionNone, c.Retention, err, tc.none, tc.keep)
		}
	}
	if _, err := Load(nil, []string{"RELAY_DATABASE_URL=postgres://h/db", "RELAY_AMQP_URL=amqp://h/", "RELAY_RETENTION=never"}); err == nil || !strings.Contains(err.Error(), "or none") {
		t.Errorf("retention never: err %v, want one naming none", err)
	}
}
