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
	"runtime/debug"
	"strings"

	"github.com/spf13/pflag"

	"github.com/outboxrelay/outboxrelay/config"
)

// Version is set at build time with -ldflags "-X .../internal/cli.Version=v1.2.3".
var Version = "dev"

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
}

// env is what a command may touch besides its configuration.
type env struct {
	stdout, stderr io.Writer
	log            *slog.Logger
}

func commands() []command {
	return []command{
		{"run", "run the relay until SIGTERM or SIGINT", []string{config.KeyDatabaseURL, config.KeyAMQPURL}, nil, runRelay},
		{"migrate", "apply the embedded database migrations (safe to repeat)", []string{config.KeyDatabaseURL}, nil, runMigrate},
		{"status", "pending, due, dead rows and oldest pending age, per exchange [--json]", []string{config.KeyDatabaseURL}, statusFlags, runStatus},
		{"dead", "list dead rows with their last error [--limit N] [--json]", []string{config.KeyDatabaseURL}, deadFlags, runDead},
		{"requeue", "move dead rows back to pending: requeue ID... | requeue --all", []string{config.KeyDatabaseURL}, requeueFlags, runRequeue},
		{"version", "print the version", nil, nil, runVersion},
	}
}

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
	fs := config.Flags("relay " + cmd.name)
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	fs.SetOutput(stderr)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "relay %s: %v\n", cmd.name, err)
		return exitUsage
	}
	cfg, err := config.Load(fs, environ, cmd.required...)
	if err != nil {
		fmt.Fprintf(stderr, "relay: %v\n", err)
		return exitUsage
	}
	e := &env{stdout: stdout, stderr: stderr, log: newLogger(stderr, cfg)}
	if err := cmd.run(ctx, e, cfg, fs); err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "relay %s: %v\n", cmd.name, err)
			return exitUsage
		}
		if cmd.name == "run" {
			e.log.Error("run failed", "err", err) // beside the relay's own structured logs
		} else {
			fmt.Fprintf(stderr, "relay %s: %v\n", cmd.name, err)
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
		fmt.Fprintf(w, "  %-19s default %-16q %s\n", k[0], k[1], k[2])
	}
}

func newLogger(w io.Writer, cfg config.Config) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// usageError is a mistake in the command's arguments (exit 2).
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func runVersion(_ context.Context, e *env, _ config.Config, _ *pflag.FlagSet) error {
	rev := "unknown"
	goVersion := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				rev = s.Value
			}
		}
	}
	fmt.Fprintf(e.stdout, "relay %s (commit %s, %s)\n", Version, rev, goVersion)
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
