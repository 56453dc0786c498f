package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay/config"
)

// docs/configuration.md is what gendoc writes from the key table now: a key
// added, renamed or re-described without `go generate ./config` fails here.
func TestConfigurationPageIsCurrent(t *testing.T) {
	t.Parallel()
	want, err := render()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("..", "..", "..", "docs", "configuration.md")
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: run `go generate ./config` (or `make docs`) and commit the result", path)
	}
}

// Every key has its row, with its environment variable, flag, type and
// default, in the key table's order.
func TestTableHasEveryKey(t *testing.T) {
	t.Parallel()
	keys := config.Describe()
	rows := strings.Split(strings.TrimSpace(table(keys)), "\n")[2:]
	if len(rows) != len(keys) {
		t.Fatalf("%d rows for %d keys", len(rows), len(keys))
	}
	for i, k := range keys {
		for _, want := range []string{"`" + k.Name + "`", "`" + k.Env() + "`", "`" + k.Flag() + "`", " " + k.Type + " "} {
			if !strings.Contains(rows[i], want) {
				t.Errorf("row %d (%s) lacks %s: %s", i, k.Name, want, rows[i])
			}
		}
		if k.Default != "" && !strings.Contains(rows[i], "`"+k.Default+"`") {
			t.Errorf("row %d (%s) lacks its default %q: %s", i, k.Name, k.Default, rows[i])
		}
	}
}
