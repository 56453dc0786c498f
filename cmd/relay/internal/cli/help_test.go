package cli

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/config"
)

// flagLine is one line of a --help flag list: the flag, pflag's boolean
// marker, the value placeholder, and the usage text.
var flagLine = regexp.MustCompile(`^\s+--([a-z][a-z-]*)(\[=true\|false\])?(?: (\S+))?\s{2,}(\S.*)$`)

// ownFlagTypes are the types of the commands' own flags (those that are
// not configuration keys).
var ownFlagTypes = map[string]string{
	"config": "string", "json": "bool", "limit": "int", "all": "bool",
	"print-sql": "bool", "print-grants": "bool",
	"app-role": "string", "relay-role": "string", "consumer-role": "string", "consumers": "string",
	"console-role": "string", "operator-role": "string",
	"from-id": "int", "to-id": "int", "since": "string", "until": "string", "ordering-key": "string",
	"exchange": "string", "routing-key": "string", "message-ids": "string", "batch": "int", "rate": "float",
	"before": "int",
}

// keyType is the type a key's default is written in: the types --help
// must show, found without asking config what it thinks they are.
func keyType(def string) string {
	if _, err := strconv.Atoi(def); err == nil {
		return "int"
	}
	if _, err := time.ParseDuration(def); err == nil {
		return "duration"
	}
	if def == "true" || def == "false" {
		return "bool"
	}
	return "string"
}

// Every command's --help lists each of its flags with the type of its
// value (a boolean with pflag's [=true|false] and no placeholder, an int as
// int, a duration as duration), and never a word of the usage text as the
// placeholder: pflag takes a back-quoted word for one (--schema relay
// migrate).
func TestEveryCommandHelpShowsTypedFlags(t *testing.T) {
	t.Parallel()
	want := map[string]string{}
	for k, typ := range ownFlagTypes {
		want[k] = typ
	}
	for _, k := range config.Describe() {
		want[strings.TrimPrefix(k.Flag(), "--")] = keyType(k.Default)
	}
	want["retention"] = "duration|none" // a duration, or the word none
	for _, cmd := range commands() {
		t.Run(cmd.name, func(t *testing.T) {
			t.Parallel()
			code, out, errOut := runMain(t, context.Background(), nil, cmd.name, "--help")
			if code != 0 || errOut != "" {
				t.Fatalf("relay %s --help: exit %d, stderr %q", cmd.name, code, errOut)
			}
			_, list, ok := strings.Cut(out, "\nflags:\n")
			if !ok {
				if cmd.name == "version" {
					return // takes no flags
				}
				t.Fatalf("relay %s --help lists no flags:\n%s", cmd.name, out)
			}
			list, _, _ = strings.Cut(list, "\n\n")
			for _, line := range strings.Split(strings.TrimRight(list, "\n"), "\n") {
				m := flagLine.FindStringSubmatch(line)
				if m == nil {
					t.Errorf("relay %s --help: not a flag line (a usage word taken as the placeholder?): %q", cmd.name, line)
					continue
				}
				name, boolMark, placeholder, usage := m[1], m[2] != "", m[3], m[4]
				typ, known := want[name]
				if !known {
					t.Errorf("relay %s --help: --%s is neither a configuration key nor a flag this test knows", cmd.name, name)
					continue
				}
				shown := placeholder
				if boolMark && placeholder == "" {
					shown = "bool"
				}
				if shown != typ {
					t.Errorf("relay %s --help: --%s shows %q, want %s:\n%s", cmd.name, name, strings.TrimSpace(m[2]+" "+placeholder), typ, line)
				}
				if strings.Contains(usage, "`") {
					t.Errorf("relay %s --help: --%s usage keeps a back quote: %q", cmd.name, name, usage)
				}
			}
		})
	}
}

// A word left over after the flags stops a command that takes no
// arguments: "--strict-ordering false" sets the flag to true and leaves
// "false", which must not be ignored.
func TestLeftOverArgumentIsAUsageError(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"run", "--strict-ordering", "false"}, {"status", "extra"}, {"migrate", "--print-sql", "false"}} {
		code, _, errOut := runMain(t, context.Background(), nil, args...)
		want := "relay " + args[0] + ": unexpected argument \"" + args[len(args)-1] + "\""
		if code != exitUsage || !strings.Contains(errOut, want) {
			t.Errorf("relay %s: exit %d, stderr %q; want exit %d and %q", strings.Join(args, " "), code, errOut, exitUsage, want)
		}
	}
}
