package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"strconv"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// manifests is every object in deploy/kubernetes, by kind.
type manifests struct {
	deployments []appsv1.Deployment
	jobs        []batchv1.Job
	secrets     []corev1.Secret
	services    []corev1.Service
}

// TestKubernetesManifests decodes each object strictly into the Kubernetes
// API type of its kind (an unknown or misplaced field, a duplicate key or a
// wrong type fails), then checks what docs/operations.md promises of them.
func TestKubernetesManifests(t *testing.T) {
	t.Parallel()
	var m manifests
	for _, f := range glob(t, "kubernetes/*.yaml") {
		m.load(t, f)
	}
	if len(m.deployments) != 1 || len(m.jobs) != 1 || len(m.services) != 1 {
		t.Fatalf("want one Deployment, one Job, one Service; got %d, %d, %d", len(m.deployments), len(m.jobs), len(m.services))
	}
	d := m.deployments[0]
	if r := d.Spec.Replicas; r == nil || *r != 2 {
		t.Errorf("Deployment %s: replicas %s, want 2", d.Name, ptrString(r))
	}
	checkRelayContainer(t, d.Spec.Template.Spec, "run")
	checkRelayContainer(t, m.jobs[0].Spec.Template.Spec, "migrate")
	checkService(t, m.services[0], d)
	for _, pod := range []corev1.PodSpec{d.Spec.Template.Spec, m.jobs[0].Spec.Template.Spec} {
		m.checkEnv(t, pod)
	}
}

func (m *manifests) load(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if err := m.decode(doc); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
}

// decode adds one YAML document; an empty one (comments only) is skipped.
func (m *manifests) decode(doc []byte) error {
	var meta metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		return err
	}
	if meta == (metav1.TypeMeta{}) && len(bytes.TrimSpace(stripComments(doc))) == 0 {
		return nil
	}
	var err error
	switch meta.APIVersion + " " + meta.Kind {
	case "apps/v1 Deployment":
		m.deployments, err = appendStrict(m.deployments, doc)
	case "batch/v1 Job":
		m.jobs, err = appendStrict(m.jobs, doc)
	case "v1 Secret":
		m.secrets, err = appendStrict(m.secrets, doc)
	case "v1 Service":
		m.services, err = appendStrict(m.services, doc)
	default:
		err = errors.New("unexpected object " + meta.APIVersion + " " + meta.Kind)
	}
	return err
}

func appendStrict[T any](list []T, doc []byte) ([]T, error) {
	var obj T
	if err := yaml.UnmarshalStrict(doc, &obj); err != nil {
		return list, err
	}
	return append(list, obj), nil
}

func stripComments(doc []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(append(out, line...), '\n')
		}
	}
	return out
}

func ptrString(p *int32) string {
	if p == nil {
		return "unset"
	}
	return strconv.Itoa(int(*p))
}
