// Package deploy holds no code: its folder has the deployment examples (the
// Kubernetes manifests in kubernetes/, the systemd units in systemd/, the
// Prometheus rules and the Grafana dashboard), and its tests check them,
// with the repository's Dockerfile and docker-compose.yml, through the real
// parsers of each format: the Compose Specification's loader, the
// Kubernetes API types decoded strictly, BuildKit's Dockerfile parser and
// linter, and systemd's own unit verifier. Every RELAY_* variable they name
// must be a configuration key. The tests need no services.
package deploy
