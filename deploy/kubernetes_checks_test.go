package deploy

import (
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// checkRelayContainer checks the pod that runs `relay <command>`: non-root,
// no privilege escalation, resources bounded; for run, the probes on the
// port the relay listens on.
func checkRelayContainer(t *testing.T, pod corev1.PodSpec, command string) {
	t.Helper()
	if len(pod.Containers) != 1 {
		t.Fatalf("relay %s: %d containers, want 1", command, len(pod.Containers))
	}
	c := pod.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != command {
		t.Errorf("container %s: args %q, want %q first", c.Name, c.Args, command)
	}
	sc := pod.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || (sc.RunAsUser != nil && *sc.RunAsUser == 0) {
		t.Errorf("container %s: the pod must set runAsNonRoot: true (and no uid 0)", c.Name)
	}
	if csc := c.SecurityContext; csc == nil || csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation ||
		csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
		t.Errorf("container %s: want allowPrivilegeEscalation: false and readOnlyRootFilesystem: true", c.Name)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if c.Resources.Requests.Name(r, "").IsZero() || c.Resources.Limits.Name(r, "").IsZero() {
			t.Errorf("container %s: resources need a %s request and limit", c.Name, r)
		}
	}
	if command == "run" {
		port := listenPort(t, c)
		checkProbe(t, c, "liveness", c.LivenessProbe, "/healthz", port)
		checkProbe(t, c, "readiness", c.ReadinessProbe, "/readyz", port)
	}
}

// listenPort is the port of the container's RELAY_HTTP_ADDR, which must be
// one of its declared ports.
func listenPort(t *testing.T, c corev1.Container) int32 {
	t.Helper()
	for _, e := range c.Env {
		if e.Name != "RELAY_HTTP_ADDR" {
			continue
		}
		_, p, _ := strings.Cut(e.Value, ":")
		n, err := strconv.ParseInt(p, 10, 32)
		if err != nil || strings.HasPrefix(e.Value, "127.") || strings.HasPrefix(e.Value, "localhost") {
			t.Fatalf("container %s: RELAY_HTTP_ADDR=%q must listen on all interfaces (\":9600\")", c.Name, e.Value)
		}
		return int32(n)
	}
	t.Fatalf("container %s: no RELAY_HTTP_ADDR: the relay would listen on 127.0.0.1, out of the probes' reach", c.Name)
	return 0
}

func checkProbe(t *testing.T, c corev1.Container, kind string, p *corev1.Probe, path string, port int32) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("container %s: no HTTP %s probe", c.Name, kind)
		return
	}
	if p.HTTPGet.Path != path {
		t.Errorf("container %s: %s probe on %s, want %s", c.Name, kind, p.HTTPGet.Path, path)
	}
	if got := containerPort(c, p.HTTPGet.Port); got != port {
		t.Errorf("container %s: %s probe on port %s (%d), the relay listens on %d", c.Name, kind, p.HTTPGet.Port.String(), got, port)
	}
}

// containerPort resolves a port by number or by the name of a declared
// container port; 0 when the name is not declared.
func containerPort(c corev1.Container, p intstr.IntOrString) int32 {
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	return 0
}

// checkService wants the Service to select the Deployment's pods and to
// point at a port its container declares.
func checkService(t *testing.T, s corev1.Service, d appsv1.Deployment) {
	t.Helper()
	labels := d.Spec.Template.Labels
	for k, v := range s.Spec.Selector {
		if labels[k] != v {
			t.Errorf("Service %s: selector %s=%s does not match the Deployment's pods (%v)", s.Name, k, v, labels)
		}
	}
	for _, p := range s.Spec.Ports {
		if containerPort(d.Spec.Template.Spec.Containers[0], p.TargetPort) == 0 {
			t.Errorf("Service %s: targetPort %s is no port of the relay container", s.Name, p.TargetPort.String())
		}
	}
}

// checkEnv wants every RELAY_* name to be a configuration key and every
// secretKeyRef to name a Secret of the manifests holding that key.
func (m *manifests) checkEnv(t *testing.T, pod corev1.PodSpec) {
	t.Helper()
	for _, c := range pod.Containers {
		var names []string
		for _, e := range c.Env {
			names = append(names, e.Name)
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && !m.hasSecretKey(*e.ValueFrom.SecretKeyRef) {
				ref := e.ValueFrom.SecretKeyRef
				t.Errorf("container %s: %s from Secret %s key %s, which the manifests do not define", c.Name, e.Name, ref.Name, ref.Key)
			}
		}
		checkEnvNames(t, "container "+c.Name, names)
	}
}

func (m *manifests) hasSecretKey(ref corev1.SecretKeySelector) bool {
	for _, s := range m.secrets {
		if s.Name != ref.Name {
			continue
		}
		_, inString := s.StringData[ref.Key]
		_, inData := s.Data[ref.Key]
		return inString || inData
	}
	return false
}
