// Package cli is the relay binary's command line: it parses arguments,
// loads configuration and wires the library packages together. It holds no
// relay logic of its own.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spf13/pflag"

	"github.com/outboxrelay/outboxrelay/config"
	"github.com/outboxrelay/outboxrelay/internal/redact"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1 // the command ran and failed
	exitUsage  = 2 // bad arguments or configuration
)

type command struct {
	name     string
	summary  string
	required []string
	flags    func(fs *pflag.FlagSet) // command-specific flags, beside the configuration keys
	run      func(ctx context.Context, e *env, cfg config.Config, fs *pflag.FlagSet) error
	// keys are the configuration keys the command reads, offered as its
	// flags (nil: every key); the others are still read from the file
	// and the environment, and validated.
	keys []string
}

// dbKeys are the keys of a command that only talks to the database.
var dbKeys = []string{config.KeyDatabaseURL, "schema", "log_level", "log_format"}

// env is what a command may touch besides its configuration.
type env struct {
	stdout, stderr io.Writer
	log            *slog.Logger // scrubs secrets itself (config.NewLogger)
	secrets        []string     // the configuration's passwords, for text
}

// text renders err for a line of text output: the configuration's
// passwords masked (a library error may quote the connection string), and
// control characters escaped.
func (e *env) text(err error) string {
	return printable(redact.Scrub(err.Error(), e.secrets))
}

// printable returns s as is when every character is printable, and
// otherwise quoted with Go's escapes (strconv.Quote). Text output shows
// values that anyone who can insert a row chose (routing keys, exchanges,
// last_error): a terminal escape in one must not rewrite the operator's
// screen, and a newline must not forge a line. JSON output needs none of
// this: the encoder escapes.
func printable(s string) string {
	for _, r := range s {
		if r == utf8.RuneError || !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

func commands() []command {
	return []command{
		{"run", "run the relay until SIGTERM or SIGINT", []string{config.KeyDatabaseURL, config.KeyAMQPURL}, nil, runRelay, nil},
		{"migrate", "apply the embedded database migrations (safe to repeat) [--print-sql] [--app-role R --relay-role R --consumer-role R [--consumers a,b] --console-role R --operator-role R] [--print-grants]", nil, migrateFlags, runMigrate, append(slices.Clip(dbKeys), "allowed_exchanges", "allowed_queues")},
		{"status", "pending, due, dead rows and oldest pending age, per exchange; ordering keys held by a dead row [--json]", []string{config.KeyDatabaseURL}, statusFlags, runStatus,
			append([]string{"ordering_policy"}, dbKeys...)},
		{"dead", "list dead rows with their last error [--limit N] [--json]", []string{config.KeyDatabaseURL}, deadFlags, runDead, dbKeys},
		{"requeue", "move dead rows back to pending: requeue ID... | requeue --all", []string{config.KeyDatabaseURL}, requeueFlags, runRequeue, dbKeys},
		{"discard", "delete dead rows for good: discard ID...", []string{config.KeyDatabaseURL}, nil, runDiscard, dbKeys},
		{"retry", "make waiting (pending) rows due now: retry ID...", []string{config.KeyDatabaseURL}, nil, runRetry, dbKeys},
		{"replay", "publish published rows again, as new pending rows the relay publishes in order: replay --message-ids same|new FILTER... [--batch N] [--rate R]", []string{config.KeyDatabaseURL}, replayFlags, runReplay, dbKeys},
		{"audit", "list the operator actions recorded (requeue, retry, discard, replay), newest first [--limit N] [--before ID] [--json]", []string{config.KeyDatabaseURL}, auditFlags, runAudit, dbKeys},
		{"console", "serve the web console (views, search, requeue, retry, discard, replay) on console_addr until SIGTERM", []string{config.KeyDatabaseURL}, nil, runConsole,
			append([]string{"console_addr", "console_token_file"}, dbKeys...)},
		{"version", "print the version", nil, nil, runVersion, []string{}},
	}
}

// idCommands take row ids as arguments; the other commands take none.
var idCommands = []string{"requeue", "discard", "retry"}

// Main runs the command line in args (without the program name) and
// returns the process exit code.
func Main(ctx context.Context, args []string, environ []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	var cmd *command
	for _, c := range commands() {
		if c.name == args[0] {
			cmd = &c
			break
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "relay: unknown command %q (try: relay help)\n", args[0])
		return exitUsage
	}
	fs := commandFlags(cmd, stdout)
	fs.SetOutput(stderr)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "relay %s: %v\n", cmd.name, err)
		return exitUsage
	}
	if fs.NArg() > 0 && !slices.Contains(idCommands, cmd.name) {
		// A boolean flag takes its value after '=': in "--strict-ordering
		// false" the flag means true and "false" is left over, so a left-over
		// word must stop the command rather than be ignored.
		fmt.Fprintf(stderr, "relay %s: unexpected argument %s (a boolean flag takes its value after '=', as in --strict-ordering=false)\n", cmd.name, strconv.Quote(fs.Arg(0)))
		return exitUsage
	}
	unknown := config.UnknownEnv(environ)
	cfg, err := config.Load(fs, environ, cmd.required...)
	if err != nil {
		warnUnknown(unknown, stderr, nil)
		fmt.Fprintf(stderr, "relay: %v\n", err)
		return exitUsage
	}
	e := &env{stdout: stdout, stderr: stderr, log: cfg.NewLogger(stderr), secrets: cfg.Secrets()}
	if cmd.name == "run" {
		warnUnknown(unknown, stderr, e.log) // stderr holds JSON or text log lines
	} else {
		warnUnknown(unknown, stderr, nil)
	}
	if err := cmd.run(ctx, e, cfg, fs); err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "relay %s: %s\n", cmd.name, e.text(err))
			return exitUsage
		}
		if cmd.name == "run" {
			e.log.Error("run failed", "err", err) // beside the relay's own structured logs
		} else {
			fmt.Fprintf(stderr, "relay %s: %s\n", cmd.name, e.text(err))
		}
		return exitFailed
	}
	return exitOK
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: relay <command> [flags]")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nconfiguration (flag --key-name, environment RELAY_KEY_NAME, or YAML file with --config):")
	for _, k := range config.Describe() {
		fmt.Fprintf(w, "  %-19s default %-16q %s\n", k.Name, k.Default, k.Help)
	}
}

// commandFlags builds cmd's flag set: its configuration keys and its own
// flags; --help prints them alone, to stdout.
func commandFlags(cmd *command, stdout io.Writer) *pflag.FlagSet {
	var fs *pflag.FlagSet
	if cmd.keys != nil && len(cmd.keys) == 0 {
		fs = pflag.NewFlagSet("relay "+cmd.name, pflag.ContinueOnError)
	} else {
		fs = config.Flags("relay "+cmd.name, cmd.keys...)
	}
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(stdout, "usage: relay %s [flags]\n\n%s\n", cmd.name, cmd.summary)
		if fs.HasFlags() {
			fmt.Fprintf(stdout, "\nflags:\n%s", fs.FlagUsages())
		}
		if len(cmd.keys) > 0 {
			fmt.Fprintln(stdout, "\nOther configuration keys are read from --config and RELAY_* variables too (relay help lists them).")
		}
	}
	return fs
}

// warnUnknown says, for each RELAY_* variable that names no configuration
// key, that it is ignored, and which variable was probably meant: through
// log when the command logs (run), otherwise as a line of text.
func warnUnknown(unknown [][2]string, stderr io.Writer, log *slog.Logger) {
	for _, u := range unknown {
		name, guess := printable(u[0]), u[1]
		if log != nil {
			log.Warn("unknown environment variable ignored", "name", name, "did_you_mean", guess)
			continue
		}
		hint := ""
		if guess != "" {
			hint = " (did you mean " + guess + "?)"
		}
		fmt.Fprintf(stderr, "relay: warning: %s is not a configuration variable and is ignored%s\n", name, hint)
	}
}

// usageError is a mistake in the command's arguments (exit 2).
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func runVersion(_ context.Context, e *env, _ config.Config, _ *pflag.FlagSet) error {
	b := binaryInfo()
	fmt.Fprintf(e.stdout, "relay %s (commit %s, %s)\n", b.version, b.commit, b.goVersion)
	return nil
}

// Exit runs Main with the process's arguments and environment.
func Exit(ctx context.Context) {
	os.Exit(Main(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

func joinInts(v []int64) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, ", ")
}
