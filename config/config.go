package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/agnivade/levenshtein"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/outboxrelay/outboxrelay/internal/redact"
)

// Config is everything `relay run` needs. Zero values never reach the
// relay: Load fills defaults and validates.
type Config struct {
	DatabaseURL       string
	Schema            string
	AMQPURLs          []string
	HTTPAddr          string
	BatchSize         int
	Workers           int
	PollInterval      time.Duration
	ConfirmTimeout    time.Duration
	MaxAttempts       int
	RetryBase         time.Duration
	RetryMax          time.Duration
	ReconnectMin      time.Duration
	ReconnectMax      time.Duration
	Heartbeat         time.Duration
	MaxPayloadBytes   int
	ShutdownTimeout   time.Duration
	LogLevel          string
	LogFormat         string
	OrderingPolicy    string
	ParkUnroutable    bool
	ConsoleAddr       string
	ConsoleTokenFile  string
	StrictOrdering    bool
	MaxBatchBytes     int64
	RescanInterval    time.Duration
	Retention         time.Duration
	RetentionNone     bool // retention: none (Retention is then 0): published rows are deleted at once
	RetentionInterval time.Duration
	RetentionBatch    int
	ListenDatabaseURL string
	StatsInterval     time.Duration
	// AllowedExchanges and AllowedQueues are the allow-list `relay migrate`
	// writes into the database (see migrations.Targets); nil leaves the
	// database's as it is.
	AllowedExchanges []string
	AllowedQueues    []string
}

// key describes one configuration key: its name, default, help text and
// how to store a raw value into Config.
type key struct {
	name  string
	def   string
	help  string
	parse parser
}

// parser turns a key's raw value into Config. kind is the type a user
// writes (string, int, duration or bool): its flag shows it in --help and
// docs/configuration.md lists it. It lives beside apply, which defines it.
type parser struct {
	kind  string
	apply func(c *Config, raw string) error
}

// text is a parser of free-form values, checked by apply itself.
func text(apply func(c *Config, raw string) error) parser { return parser{"string", apply} }

var keys = []key{
	{"database_url", "", "PostgreSQL URL (postgres://user:pass@host:port/db) or key=value DSN (host=db user=app ...); required", text(func(c *Config, s string) error {
		if s == "" {
			return nil // required-ness depends on the command: see Load
		}
		if err := checkPostgres(s); err != nil {
			return err
		}
		c.DatabaseURL = s
		return nil
	})},
	{"schema", "", "schema of the relay's tables, created by `relay migrate` if missing; taken as written (case matters); empty: the connection's current schema", text(func(c *Config, s string) error {
		if err := checkSchema(s); err != nil {
			return err
		}
		c.Schema = s
		return nil
	})},
	{"amqp_url", "", "RabbitMQ URL(s), comma-separated for a failover list; required", text(func(c *Config, s string) error {
		c.AMQPURLs = nil
		parts := strings.Split(s, ",")
		for i, part := range parts {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			// The whole list is shown, redacted as one value: a part cut
			// at a comma inside a password would not be recognised as one.
			err := checkURL(part, "amqp", "amqps")
			if err == nil {
				err = checkAMQPTLSFiles(part)
			}
			if err != nil {
				if len(parts) > 1 {
					err = fmt.Errorf("URL %d of %d %w", i+1, len(parts), err)
				}
				return fmt.Errorf("%w, got %s", err, shown(s))
			}
			c.AMQPURLs = append(c.AMQPURLs, part)
		}
		return nil
	})},
	{"http_addr", "127.0.0.1:9600", "address for /metrics, /healthz and /readyz; empty disables", text(func(c *Config, s string) error {
		c.HTTPAddr = s
		return nil
	})},
	{"batch_size", "500", "rows claimed per batch (fewer while rows are too large for max_batch_bytes to keep a whole batch)", intIn(1, 100_000, func(c *Config, v int) { c.BatchSize = v })},
	{"workers", "2", "concurrent claim/publish loops, each with its own AMQP channel", intIn(1, 64, func(c *Config, v int) { c.Workers = v })},
	{"poll_interval", "1s", "fallback poll when no insert notification arrives", durationIn(time.Millisecond, time.Hour, func(c *Config, v time.Duration) { c.PollInterval = v })},
	{"confirm_timeout", "5s", "how long the broker may go without confirming anything while confirms are outstanding; past it the node makes no progress: rows in flight are released uncharged and the relay moves to the next amqp_url", durationIn(time.Millisecond, time.Hour, func(c *Config, v time.Duration) { c.ConfirmTimeout = v })},
	{"max_attempts", "10", "failed attempts after which a row is parked as dead", intIn(1, 1_000_000, func(c *Config, v int) { c.MaxAttempts = v })},
	{"retry_base", "1s", "backoff after the first failed attempt; doubles each attempt", durationIn(time.Millisecond, 24*time.Hour, func(c *Config, v time.Duration) { c.RetryBase = v })},
	{"retry_max", "5m", "longest backoff between attempts", durationIn(time.Millisecond, 7*24*time.Hour, func(c *Config, v time.Duration) { c.RetryMax = v })},
	{"reconnect_min", "100ms", "first delay before reconnecting to a broker or database", durationIn(time.Millisecond, time.Hour, func(c *Config, v time.Duration) { c.ReconnectMin = v })},
	{"reconnect_max", "15s", "longest delay between reconnect attempts", durationIn(time.Millisecond, time.Hour, func(c *Config, v time.Duration) { c.ReconnectMax = v })},
	{"heartbeat", "10s", "AMQP heartbeat interval", durationIn(time.Second, time.Hour, func(c *Config, v time.Duration) { c.Heartbeat = v })},
	{"max_payload_bytes", "16777216", "payloads larger than this are failed without publishing (keep at or below the broker's max_message_size)", intIn(1, 512<<20, func(c *Config, v int) { c.MaxPayloadBytes = v })},
	{"shutdown_timeout", "10s", "on SIGTERM, how long in-flight batches may take to finish before they are abandoned", durationIn(0, time.Hour, func(c *Config, v time.Duration) { c.ShutdownTimeout = v })},
	{"ordering_policy", "block", "while an earlier row of a key is dead: block the key's later rows (until requeued or discarded) or skip past it", oneOf([]string{"block", "skip"}, func(c *Config, v string) { c.OrderingPolicy = v })},
	{"console_addr", "127.0.0.1:8090", "address of relay console; any address but loopback requires console_token_file", text(func(c *Config, s string) error {
		c.ConsoleAddr = s
		return nil
	})},
	{"console_token_file", "", "file holding the token relay console requires of every request (login form or Authorization: Bearer); required off loopback", text(func(c *Config, s string) error {
		c.ConsoleTokenFile = s
		return nil
	})},
	{"park_unroutable", "false", "true: a row the broker returns as unroutable, or sent to an exchange that does not exist, is parked dead at its first failure; false: it is retried with backoff like any failure (the binding or exchange may appear later, declared by a consumer)", boolean(func(c *Config, v bool) { c.ParkUnroutable = v })},
	{"strict_ordering", "false", "true: at most one unconfirmed row per ordering key (other keys stay pipelined), so a broker that refuses a row can never accept the key's next row first; false: a key's run is pipelined and such an overtake is counted (outboxrelay_relay_ordering_overtaken_total)", boolean(func(c *Config, v bool) { c.StrictOrdering = v })},
	{"max_batch_bytes", "0", "bytes one batch may load and hold (payloads, and headers as their text plus what they decode to); the relay's memory follows it (0: 16 MiB or max_payload_bytes if larger; must not be below max_payload_bytes)", intIn(0, 1<<40, func(c *Config, v int) { c.MaxBatchBytes = int64(v) })},
	{"rescan_interval", "1s", "while draining a backlog, how often a claim starts from the beginning of the table (finds rows committed late below the cursor)", durationIn(10*time.Millisecond, time.Hour, func(c *Config, v time.Duration) { c.RescanInterval = v })},
	{"retention", "168h", "delete published rows older than this (0 keeps them forever; none keeps no published row: each is deleted by the transaction that records its confirm, a third of the database's work per message, but the console, replay and status then see no published rows); dead and pending rows are never deleted", retention()},
	{"retention_interval", "1m", "how often retention runs (one relay at a time)", durationIn(10*time.Millisecond, 24*time.Hour, func(c *Config, v time.Duration) { c.RetentionInterval = v })},
	{"retention_batch", "1000", "rows deleted per retention statement", intIn(1, 100_000, func(c *Config, v int) { c.RetentionBatch = v })},
	{"listen_database_url", "", "direct PostgreSQL URL for LISTEN when database_url goes through PgBouncer in transaction mode; empty uses database_url", text(func(c *Config, s string) error {
		if s == "" {
			c.ListenDatabaseURL = ""
			return nil
		}
		if err := checkPostgres(s); err != nil {
			return err
		}
		c.ListenDatabaseURL = s
		return nil
	})},
	{"stats_interval", "15s", "how often the backlog and table gauges are refreshed", durationIn(10*time.Millisecond, time.Hour, func(c *Config, v time.Duration) { c.StatsInterval = v })},
	{"allowed_exchanges", "", "relay migrate: the exchanges outbox rows may name, comma-separated (every routing key; * allows everything); with allowed_queues, replaces the database's allow-list (empty: leave it as it is); see docs/sharing.md", nameList(func(c *Config, v []string) { c.AllowedExchanges = v })},
	{"allowed_queues", "", "relay migrate: the queues outbox rows may reach through the default exchange, comma-separated (* every queue); the inbox's <queue>.retry.<delay> and <queue>.dead are refused unless named here", nameList(func(c *Config, v []string) { c.AllowedQueues = v })},
	{"log_level", "info", "debug, info, warn or error", oneOf([]string{"debug", "info", "warn", "error"}, func(c *Config, v string) { c.LogLevel = v })},
	{"log_format", "json", "json or text", oneOf([]string{"json", "text"}, func(c *Config, v string) { c.LogFormat = v })},
}

// Flags returns a flag set with one flag per key (batch_size becomes
// --batch-size) plus --config. With only, it holds the flags of those keys
// alone (a command's own), so that its --help lists what it reads; the
// other keys can still be set in the file or the environment.
//
// A flag shows its key's type in --help (--batch-size int, --strict-ordering
// as a boolean that may stand alone) but keeps the text as typed: Load
// parses it with the key's own rules, so a bad value gets the same
// one-line error, naming the key, from every source.
func Flags(name string, only ...string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.String("config", "", "YAML configuration file")
	for _, k := range keys {
		if len(only) > 0 && !slices.Contains(only, k.name) {
			continue
		}
		def := k.def
		if k.parse.kind == "string" {
			def = strconv.Quote(def)
		}
		usage := fmt.Sprintf("%s (env RELAY_%s, default %s)", PlainUsage(k.help), strings.ToUpper(k.name), def)
		var v pflag.Value = &rawFlag{kind: k.parse.kind}
		if k.parse.kind == "bool" {
			v = &rawBoolFlag{rawFlag{kind: "bool"}}
		}
		fs.Var(v, flagName(k.name), usage)
	}
	return fs
}

// PlainUsage makes help text fit for a pflag usage string: pflag would take
// a back-quoted word ("`relay migrate`") as the flag's value placeholder
// (--schema relay migrate), so back quotes become single quotes.
func PlainUsage(help string) string { return strings.ReplaceAll(help, "`", "'") }

// rawFlag holds a flag's text as typed, for Load to parse; kind is what
// --help shows as the value's type.
type rawFlag struct{ value, kind string }

func (f *rawFlag) String() string     { return f.value }
func (f *rawFlag) Set(s string) error { f.value = s; return nil }
func (f *rawFlag) Type() string       { return f.kind }

// rawBoolFlag is a rawFlag that may stand alone (--strict-ordering means
// --strict-ordering=true), as pflag's own booleans.
type rawBoolFlag struct{ rawFlag }

func (*rawBoolFlag) IsBoolFlag() bool { return true }

// testPrefix marks the variables of the project's own test suite
// (RELAY_TEST_DATABASE_URL, ...), which UnknownEnv leaves alone.
const testPrefix = "RELAY_TEST_"

// UnknownEnv lists the RELAY_* variables of environ that name no
// configuration key, sorted, each with the closest key's variable (by edit
// distance, compared without underscores so that RELAY_BATCHSIZE finds
// RELAY_BATCH_SIZE), or "" when none is close. Load ignores such a
// variable; the binary warns about it. Variables starting with RELAY_TEST_
// belong to the project's test suite and are not listed.
func UnknownEnv(environ []string) [][2]string {
	var out [][2]string
	for _, kv := range environ {
		name, _, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, "RELAY_") || strings.HasPrefix(name, testPrefix) {
			continue
		}
		key := strings.ToLower(strings.TrimPrefix(name, "RELAY_"))
		if known(key) {
			continue
		}
		out = append(out, [2]string{name, closest(key)})
	}
	slices.SortFunc(out, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return out
}

// closest returns the variable of the key nearest to key, or "" when even
// the nearest needs more edits than a third of its length.
func closest(key string) string {
	squash := func(s string) string { return strings.ReplaceAll(s, "_", "") }
	best, bestDist := "", math.MaxInt
	for _, k := range keys {
		if d := levenshtein.ComputeDistance(squash(key), squash(k.name)); d < bestDist {
			best, bestDist = k.name, d
		}
	}
	if bestDist > max(1, len(squash(best))/3) {
		return ""
	}
	return "RELAY_" + strings.ToUpper(best)
}

func flagName(k string) string { return strings.ReplaceAll(k, "_", "-") }

// Keys a command may require with Load.
const (
	KeyDatabaseURL = "database_url"
	KeyAMQPURL     = "amqp_url"
)

// Load reads defaults, the --config file, RELAY_* variables from environ and
// the flags already parsed into fs, later wins, and validates the result.
// The keys in required must be set (migrate needs no broker, run does).
func Load(fs *pflag.FlagSet, environ []string, required ...string) (Config, error) {
	v := viper.New()
	for _, k := range keys {
		v.SetDefault(k.name, k.def)
	}
	if fs != nil {
		if f := fs.Lookup("config"); f != nil && f.Value.String() != "" {
			v.SetConfigFile(f.Value.String())
			v.SetConfigType("yaml")
			if err := v.ReadInConfig(); err != nil {
				return Config{}, fmt.Errorf("config: file %s: %w", f.Value.String(), oneLine(err))
			}
			for _, name := range v.AllKeys() {
				if !known(name) {
					return Config{}, fmt.Errorf("config: file %s: unknown key %q", f.Value.String(), name)
				}
			}
		}
	}
	env := map[string]string{}
	for _, kv := range environ {
		if name, val, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(name, "RELAY_") {
			env[name] = val
		}
	}
	var c Config
	for _, k := range keys {
		raw := rawString(v.Get(k.name))
		source := "default"
		if v.InConfig(k.name) {
			source = "config file"
		}
		if val, ok := env["RELAY_"+strings.ToUpper(k.name)]; ok {
			raw, source = val, "RELAY_"+strings.ToUpper(k.name)
		}
		if fs != nil {
			if f := fs.Lookup(flagName(k.name)); f != nil && f.Changed {
				raw, source = f.Value.String(), "--"+flagName(k.name)
			}
		}
		if err := k.parse.apply(&c, strings.TrimSpace(raw)); err != nil {
			// Every message already shows values through shown(); this
			// also catches a library error (pgconn) quoting the value.
			msg := redact.Scrub(err.Error(), redact.Secrets(raw))
			return Config{}, fmt.Errorf("config: %s (from %s): %s", k.name, source, oneLine(errors.New(msg)))
		}
	}
	for _, k := range required {
		if (k == KeyDatabaseURL && c.DatabaseURL == "") || (k == KeyAMQPURL && len(c.AMQPURLs) == 0) {
			return Config{}, fmt.Errorf("config: %s: is required (set RELAY_%s or --%s)", k, strings.ToUpper(k), flagName(k))
		}
	}
	if c.RetryMax < c.RetryBase {
		return Config{}, fmt.Errorf("config: retry_max: must be at least retry_base (%s)", c.RetryBase)
	}
	if c.ReconnectMax < c.ReconnectMin {
		return Config{}, fmt.Errorf("config: reconnect_max: must be at least reconnect_min (%s)", c.ReconnectMin)
	}
	return c, nil
}

// rawString turns a value viper read (a YAML scalar or list) into the
// string form the parsers take; a YAML list becomes a comma-separated one.
func rawString(v any) string {
	if list, ok := v.([]any); ok {
		parts := make([]string, len(list))
		for i, p := range list {
			parts[i] = fmt.Sprint(p)
		}
		return strings.Join(parts, ",")
	}
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

func known(name string) bool {
	for _, k := range keys {
		if k.name == name {
			return true
		}
	}
	return false
}

func oneLine(err error) error {
	return errors.New(strings.Join(strings.Fields(err.Error()), " "))
}

func intIn(lo, hi int, set func(*Config, int)) parser {
	return parser{"int", func(c *Config, s string) error {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			f, ferr := strconv.ParseFloat(s, 64) // YAML may hand us 500.0
			if ferr != nil || f != math.Trunc(f) {
				return fmt.Errorf("must be a whole number, got %s", shown(s))
			}
			n = int64(f)
		}
		if n < int64(lo) || n > int64(hi) {
			return fmt.Errorf("must be between %d and %d, got %d", lo, hi, n)
		}
		set(c, int(n))
		return nil
	}}
}

func durationIn(lo, hi time.Duration, set func(*Config, time.Duration)) parser {
	return parser{"duration", func(c *Config, s string) error {
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("must be a duration such as 500ms or 2s, got %s", shown(s))
		}
		if d < lo || d > hi {
			return fmt.Errorf("must be between %s and %s, got %s", lo, hi, d)
		}
		set(c, d)
		return nil
	}}
}

// retention takes a duration or none (see the retention key).
func retention() parser {
	d := durationIn(0, 100*365*24*time.Hour, func(c *Config, v time.Duration) { c.Retention, c.RetentionNone = v, false })
	return parser{"duration|none", func(c *Config, s string) error {
		if strings.EqualFold(strings.TrimSpace(s), "none") {
			c.Retention, c.RetentionNone = 0, true
			return nil
		}
		if err := d.apply(c, s); err != nil {
			return fmt.Errorf("%w (or none)", err)
		}
		return nil
	}}
}

// nameList parses a comma-separated list of AMQP names (exchanges,
// queues): each 1 to 255 bytes of UTF-8 without control characters, or *.
func nameList(set func(*Config, []string)) parser {
	return parser{"string", func(c *Config, s string) error {
		var out []string
		for _, part := range strings.Split(s, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			if len(part) > 255 || !utf8.ValidString(part) || strings.ContainsFunc(part, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				return fmt.Errorf("%s is not an AMQP name (at most 255 bytes of UTF-8, no control characters)", shown(part))
			}
			out = append(out, part)
		}
		set(c, out)
		return nil
	}}
}

func oneOf(allowed []string, set func(*Config, string)) parser {
	return parser{"string", func(c *Config, s string) error {
		s = strings.ToLower(s)
		for _, a := range allowed {
			if s == a {
				set(c, s)
				return nil
			}
		}
		return fmt.Errorf("must be one of %s, got %s", strings.Join(allowed, ", "), shown(s))
	}}
}

// boolean takes true or false, in any case (a YAML true arrives as "true").
func boolean(set func(*Config, bool)) parser {
	p := oneOf([]string{"false", "true"}, func(c *Config, v string) { set(c, v == "true") })
	p.kind = "bool"
	return p
}

// maxSchema is the longest schema name: the relay's notification channel
// "<schema>.outbox" must fit PostgreSQL's 63-byte identifiers.
const maxSchema = 63 - len(".outbox")

// checkSchema accepts any name PostgreSQL can hold that fits maxSchema;
// the relay always quotes it.
func checkSchema(s string) error {
	if len(s) > maxSchema {
		return fmt.Errorf("must be at most %d bytes (the notification channel \"<schema>.outbox\" must fit 63), got %d", maxSchema, len(s))
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return fmt.Errorf("must be printable UTF-8, got %s", shown(s))
		}
	}
	return nil
}

// checkPostgres accepts what pgx accepts: a postgres:// URL or a key=value
// DSN. pgconn parses it here, so that a bad port or sslmode stops the
// binary at start like any other configuration error (its message is
// scrubbed by Load).
// plainWords matches an error reason made of lowercase words only.
var plainWords = regexp.MustCompile(`^[a-z][a-z _-]*$`)

func checkPostgres(s string) error {
	if schemeOf(s) != "" {
		if err := checkURL(s, "postgres", "postgresql"); err != nil {
			return fmt.Errorf("%w, got %s", err, shown(s))
		}
		if err := checkPostgresTLSFiles(s); err != nil {
			return fmt.Errorf("%w, got %s", err, shown(s))
		}
	} else if !strings.Contains(s, "=") {
		return fmt.Errorf("must be a postgres:// URL or a key=value DSN, got %s", shown(s))
	}
	if _, err := pgconn.ParseConfig(s); err != nil {
		// pgconn's error quotes the value with its own partial redaction,
		// which can leave part of a password in sight (a value that does
		// not parse as a URL has no structure to redact by): keep its
		// reason, and quote the value redacted our way.
		// Its reason is kept only when it is plain words ("invalid port",
		// "sslmode is invalid"): others quote a piece of the value
		// ("invalid percent-encoded token: ..."), cut anywhere, which no
		// redaction can be trusted to recognise.
		reason := "not a valid URL or key=value connection string"
		var pe *pgconn.ParseConfigError
		if errors.As(err, &pe) {
			if _, after, ok := strings.Cut(err.Error(), "`: "); ok && plainWords.MatchString(after) {
				reason = after
			}
		}
		v := shown(s)
		return fmt.Errorf("cannot parse `%s`: %s", v[1:len(v)-1], reason)
	}
	return nil
}

// checkURL checks that s is a URL with one of schemes and a host, and that
// its user info ends before the host: an unencoded '/' in a password puts
// the rest of it in the path, and the client would dial the password as a
// port.
func checkURL(s string, schemes ...string) error {
	want := "must be a URL with a host (" + strings.Join(schemes, ":// or ") + "://)"
	u, err := url.Parse(s)
	if err != nil || !slices.Contains(schemes, u.Scheme) || (u.Host == "" && !u.Query().Has("host")) {
		return errors.New(want)
	}
	if strings.Contains(u.Path, "@") {
		return errors.New("has an '@' after the host: percent-encode '/', '?', '#' and '@' in the user name and password")
	}
	return nil
}

func schemeOf(s string) string {
	scheme, _, ok := strings.Cut(s, "://")
	if !ok || strings.ContainsAny(scheme, " =/") {
		return ""
	}
	return scheme
}

// shown renders a configuration value for an error message: passwords
// masked, control characters escaped, on one line.
func shown(s string) string { return strconv.Quote(redact.Value(s)) }

// Redact returns s with every password masked, safe to print: URLs, lists
// of URLs, key=value DSNs and user:pass@host (see internal/redact).
func Redact(s string) string { return redact.Value(s) }

// Secrets lists the passwords held in the configuration, in every form a
// library may echo them, for scrubbing logs and errors.
func (c Config) Secrets() []string {
	var out []string
	for _, v := range append([]string{c.DatabaseURL, c.ListenDatabaseURL, c.HTTPAddr}, c.AMQPURLs...) {
		out = append(out, redact.Secrets(v)...)
	}
	return out
}

// NewLogger returns the logger the configuration asks for (log_level,
// log_format), writing to w, with the configuration's passwords scrubbed
// from every line.
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.LogLevel)) // validated by Load; "" is info
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: replaceAttr(redact.ReplaceAttr(c.Secrets()))}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// replaceAttr writes durations as text ("4s", "14.624s", "250ms"), where
// slog's JSON handler would write nanoseconds, then scrubs secrets (scrub
// may be nil: nothing to hide).
func replaceAttr(scrub func([]string, slog.Attr) slog.Attr) func([]string, slog.Attr) slog.Attr {
	return func(groups []string, a slog.Attr) slog.Attr {
		if a.Value.Kind() == slog.KindDuration {
			a.Value = slog.StringValue(DurationText(a.Value.Duration()))
		}
		if scrub != nil {
			a = scrub(groups, a)
		}
		return a
	}
}

// DurationText renders d for people: Go's duration syntax, rounded to the
// millisecond from a second up and to the microsecond below.
func DurationText(d time.Duration) string {
	if d >= time.Second || d <= -time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// KeyDoc documents one configuration key.
type KeyDoc struct {
	Name    string // as in the YAML file: batch_size
	Type    string // string, int, duration or bool
	Default string // as a user would write it; "" for none
	Help    string // one line; back quotes mark code
}

// Env is the key's environment variable: RELAY_BATCH_SIZE.
func (k KeyDoc) Env() string { return "RELAY_" + strings.ToUpper(k.Name) }

// Flag is the key's flag: --batch-size.
func (k KeyDoc) Flag() string { return "--" + flagName(k.Name) }

// Describe lists every key in the order of the key table, for `relay help`
// and docs/configuration.md.
func Describe() []KeyDoc {
	out := make([]KeyDoc, 0, len(keys))
	for _, k := range keys {
		out = append(out, KeyDoc{Name: k.name, Type: k.parse.kind, Default: k.def, Help: k.help})
	}
	return out
}
