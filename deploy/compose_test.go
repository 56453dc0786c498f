package deploy

import (
	"context"
	"slices"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
)

// TestComposeFile loads docker-compose.yml with the Compose Specification's
// loader (schema validation, interpolation, consistency of depends_on,
// volumes and networks), as `docker compose` does.
func TestComposeFile(t *testing.T) {
	t.Parallel()
	opts, err := cli.NewProjectOptions([]string{"../docker-compose.yml"},
		cli.WithWorkingDirectory(".."), cli.WithEnv(nil), cli.WithDotEnv)
	if err != nil {
		t.Fatal(err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, want := range []string{"postgres", "rabbitmq", "relay", "relay-migrate"} {
		if !slices.Contains(project.ServiceNames(), want) {
			t.Errorf("docker-compose.yml: no service %q (has %v)", want, project.ServiceNames())
		}
	}
	for name, svc := range project.Services {
		var names []string
		for env := range svc.Environment {
			names = append(names, env)
		}
		checkEnvNames(t, "docker-compose.yml service "+name, names)
	}
}
