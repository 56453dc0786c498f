package redact

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestValue(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, want string }{
		{"postgres://u:pw@h:5432/db?sslmode=disable", "postgres://u:xxxxx@h:5432/db?sslmode=disable"},
		{"amqp://guest@h/", "amqp://guest@h/"},
		{"postgres://h/db?password=pw", "postgres://h/db?password=xxxxx"},
		{"postgres://h/db?sslmode=require&sslpassword=pw&x=1", "postgres://h/db?sslmode=require&sslpassword=xxxxx&x=1"},
		{"postgres://h/db?pass%77ord=pw", "postgres://h/db?pass%77ord=xxxxx"},
		// An unencoded '/' or '?' in the password: the last '@' ends it.
		{"amqp://u:/pw@h/", "amqp://u:xxxxx@h/"},
		{"amqp://u:12/34@h/", "amqp://u:xxxxx@h/"},
		{"postgres://u:a?b#c@h/db", "postgres://u:xxxxx@h/db"},
		// Lists: each URL on its own; a comma in a password does not split.
		{"amqp://a:p1@h1/,amqp://b:p2@h2/", "amqp://a:xxxxx@h1/,amqp://b:xxxxx@h2/"},
		{"amqp://a:p,1@h1/,amqps://h2/", "amqp://a:xxxxx@h1/,amqps://h2/"},
		{"postgres://u:pw@h1:5432,h2:5432/db", "postgres://u:xxxxx@h1:5432,h2:5432/db"},
		// key=value DSNs.
		{"host=db user=app password=hunter2 port=x", "host=db user=app password=xxxxx port=x"},
		{"host=db password = 'hun ter\\'2' port=x", "host=db password = xxxxx port=x"},
		{"host=db password=hun\\ ter2 port=x", "host=db password=xxxxx port=x"},
		{"host=db sslpassword=k3y", "host=db sslpassword=xxxxx"},
		{"host=db PASSWORD=pw", "host=db PASSWORD=xxxxx"},
		{"host='x password=pw'", "host='x password=xxxxx"},
		{"host=db password='unterminated", "host=db password=xxxxx"},
		// user:pass@host without a scheme.
		{"app:hunter2@db:5432/orders", "app:xxxxx@db:5432/orders"},
		// Nothing that can hold a password.
		{"localhost:5432", "localhost:5432"},
		{"::not a url", "::not a url"},
		{"", ""},
	}
	for _, tc := range cases {
		if got := Value(tc.in); got != tc.want {
			t.Errorf("Value(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestURLKeepsItsContract(t *testing.T) {
	t.Parallel()
	if got := URL("postgres://u:pw@h/db"); got != "postgres://u:xxxxx@h/db" {
		t.Errorf("URL: got %q", got)
	}
	if got := URL("postgres://u:p%zz@h/db"); got != "<unparseable URL>" {
		t.Errorf("an unparseable URL must be replaced whole: got %q", got)
	}
}

func TestHost(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"amqp://u:pw@h:5672/vhost": "h:5672",
		"amqp://h/":                "h",
		"amqp://u:12/34@h/":        "h", // url.Parse would say u:12
		"amqps://u:a?b@h:5671":     "h:5671",
		"amqp://u:p@ss@h/":         "h", // an unencoded '@' in the password
	}
	for in, want := range cases {
		if got := Host(in); got != want {
			t.Errorf("Host(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSecretsCoverTheFormsLibrariesEcho(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in   string
		want []string
	}{
		{"postgres://u:p%40ss@h/db", []string{"p%40ss", "p@ss"}},
		{"host=db password='a b\\'c'", []string{"'a b\\'c'", "a b'c"}},
		{"amqp://u:p w@h/", []string{"p w", "p+w", "p%20w"}},
		{"host=db user=app", nil},
	}
	for _, tc := range cases {
		got := Secrets(tc.in)
		for _, w := range tc.want {
			found := false
			for _, g := range got {
				found = found || g == w
			}
			if !found {
				t.Errorf("Secrets(%q) = %q, missing %q", tc.in, got, w)
			}
		}
		if tc.want == nil && len(got) != 0 {
			t.Errorf("Secrets(%q) = %q, want none", tc.in, got)
		}
	}
}

func TestScrubMasksTheLongestFirst(t *testing.T) {
	t.Parallel()
	got := Scrub("auth failed for hunter2 and hunter", []string{"hunter", "hunter2"})
	if got != "auth failed for xxxxx and xxxxx" {
		t.Errorf("got %q", got)
	}
}

func TestReplaceAttrScrubsLogLines(t *testing.T) {
	t.Parallel()
	dsn := "host=db user=app password='hun ter2'"
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{ReplaceAttr: ReplaceAttr(Secrets(dsn))}))
	log.Error("connect failed", "err", errors.New(`password "hun ter2" rejected`), "dsn", dsn,
		"urls", []string{"amqp://u:hun ter2@h/"}, slog.Group("g", "inner", "hun ter2"), "attempt", 3)
	out := buf.String()
	if strings.Contains(out, "hun ter2") || strings.Contains(out, "ter2") {
		t.Fatalf("secret in log line: %s", out)
	}
	if !strings.Contains(out, `"attempt":3`) || !strings.Contains(out, `rejected`) {
		t.Fatalf("the rest of the line must stay: %s", out)
	}
	if ReplaceAttr(nil) != nil {
		t.Error("no secrets: no ReplaceAttr, so logging costs nothing extra")
	}
}
