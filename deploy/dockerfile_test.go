package deploy

import (
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// TestDockerfile parses the Dockerfile with BuildKit's parser and linter
// (what `docker build` runs) and checks the runtime stages: a non-root
// numeric USER, the relay's ENTRYPOINT and CMD, the HTTP port exposed and
// listened on, a static (cgo-free) build.
func TestDockerfile(t *testing.T) {
	t.Parallel()
	stages := parseDockerfile(t, "../Dockerfile")
	relay := stages[len(stages)-1] // a build without --target builds the last stage
	if relay.Name != "relay" {
		t.Fatalf("last stage is %q, want relay", relay.Name)
	}
	for _, s := range stages {
		if entrypoint(s) != nil {
			checkNonRoot(t, s)
		}
	}
	if got := entrypoint(relay); !slices.Equal(got, []string{"relay"}) {
		t.Errorf("relay stage: ENTRYPOINT %q, want [relay]", got)
	}
	if got := cmd(relay); !slices.Equal(got, []string{"run"}) {
		t.Errorf("relay stage: CMD %q, want [run]", got)
	}
	env := stageEnv(stages, relay)
	_, port, _ := strings.Cut(env["RELAY_HTTP_ADDR"], ":")
	if port == "" || !slices.Contains(exposed(relay), port) {
		t.Errorf("relay stage: RELAY_HTTP_ADDR=%q, EXPOSE %v: the image must listen on the port it exposes", env["RELAY_HTTP_ADDR"], exposed(relay))
	}
	if build := stageByName(stages, "source"); build == nil || stageEnv(stages, *build)["CGO_ENABLED"] != "0" {
		t.Error(`stage "source": CGO_ENABLED=0 missing; the distroless static image needs a static binary`)
	}
	for _, s := range stages {
		var names []string
		for k := range stageEnv(stages, s) {
			names = append(names, k)
		}
		checkEnvNames(t, "Dockerfile stage "+s.Name, names)
	}
}

// TestDockerfileBaseImagesArePinned checks that every stage built on an
// image (not on an earlier stage) names it by digest, so a rebuild cannot
// pick up whatever the tag points to that day.
func TestDockerfileBaseImagesArePinned(t *testing.T) {
	t.Parallel()
	stages := parseDockerfile(t, "../Dockerfile")
	for i, s := range stages {
		if stageByName(stages[:i], s.BaseName) != nil {
			continue
		}
		if !pinnedImage.MatchString(s.BaseName) {
			t.Errorf("stage %q: FROM %s is not pinned by digest (want image:tag@sha256:<64 hex>)", s.Name, s.BaseName)
		}
	}
}

// pinnedImage is a reference with a tag and a sha256 digest.
var pinnedImage = regexp.MustCompile(`^[^@\s]+:[\w][\w.-]*@sha256:[0-9a-f]{64}$`)

func parseDockerfile(t *testing.T, path string) []instructions.Stage {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for _, w := range res.Warnings {
		t.Errorf("%s: %s", path, w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []parser.Range) {
		t.Errorf("%s:%d: lint %s: %s", path, loc[0].Start.Line, rule, msg)
	}})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(stages) == 0 {
		t.Fatalf("%s: no stage", path)
	}
	return stages
}

// checkNonRoot wants the stage's last USER to be a numeric uid (and gid)
// other than 0: Kubernetes' runAsNonRoot cannot verify a user name.
func checkNonRoot(t *testing.T, s instructions.Stage) {
	t.Helper()
	user := ""
	for _, c := range s.Commands {
		if u, ok := c.(*instructions.UserCommand); ok {
			user = u.User
		}
	}
	for i, id := range strings.Split(user, ":") {
		n, err := strconv.Atoi(id)
		if err != nil || n == 0 || i > 1 {
			t.Errorf("stage %q: USER %q, want a numeric non-root uid[:gid]", s.Name, user)
			return
		}
	}
}

// entrypoint and cmd are the stage's last ENTRYPOINT and CMD (nil: none).
func entrypoint(s instructions.Stage) []string { return cmdLines(s)[0] }
func cmd(s instructions.Stage) []string        { return cmdLines(s)[1] }

// cmdLines reads the exec (JSON) form only: a shell form runs /bin/sh,
// which a distroless image does not have, so it reads as nothing.
func cmdLines(s instructions.Stage) (out [2][]string) {
	for _, c := range s.Commands {
		switch c := c.(type) {
		case *instructions.EntrypointCommand:
			out[0] = execForm(c.ShellDependantCmdLine)
		case *instructions.CmdCommand:
			out[1] = execForm(c.ShellDependantCmdLine)
		}
	}
	return out
}

func execForm(c instructions.ShellDependantCmdLine) []string {
	if c.PrependShell {
		return nil
	}
	return c.CmdLine
}

func exposed(s instructions.Stage) []string {
	var out []string
	for _, c := range s.Commands {
		if e, ok := c.(*instructions.ExposeCommand); ok {
			out = append(out, e.Ports...)
		}
	}
	return out
}

// stageEnv is the ENV a stage ends with, its base stages' included.
func stageEnv(stages []instructions.Stage, s instructions.Stage) map[string]string {
	env := map[string]string{}
	if base := stageByName(stages, s.BaseName); base != nil {
		env = stageEnv(stages, *base)
	}
	for _, c := range s.Commands {
		if e, ok := c.(*instructions.EnvCommand); ok {
			for _, kv := range e.Env {
				env[kv.Key] = kv.Value
			}
		}
	}
	return env
}

func stageByName(stages []instructions.Stage, name string) *instructions.Stage {
	for i := range stages {
		if stages[i].Name == name {
			return &stages[i]
		}
	}
	return nil
}
