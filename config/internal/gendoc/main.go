// Command gendoc writes docs/configuration.md from the configuration's key
// table (config.Describe), so the page can never drift from what the
// binary reads. Run it after changing a key:
//
//	go generate ./config
//
// or `make docs`. A test fails while the page in the tree is stale.
package main

import (
	"bytes"
	_ "embed"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/template"

	"github.com/outboxrelay/outboxrelay/config"
)

//go:embed configuration.md.tmpl
var page string

func main() {
	out := flag.String("o", "docs/configuration.md", "file to write")
	flag.Parse()
	b, err := render()
	if err == nil {
		err = os.WriteFile(*out, b, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gendoc:", err)
		os.Exit(1)
	}
}

// render returns the page: the template's prose around the table of keys.
func render() ([]byte, error) {
	t, err := template.New("configuration.md").Parse(page)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, map[string]string{"Keys": table(config.Describe())}); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// table renders the keys as a Markdown table, one row a key, in the key
// table's order.
func table(keys []config.KeyDoc) string {
	var b strings.Builder
	b.WriteString("| key | environment | flag | type | default | meaning |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- |\n")
	for _, k := range keys {
		def := "(none)"
		if k.Default != "" {
			def = "`" + k.Default + "`"
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | `%s` | %s | %s | %s |\n",
			k.Name, k.Env(), k.Flag(), k.Type, def, cell(k.Help))
	}
	return b.String()
}

// cell makes help text safe inside a table cell.
func cell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}
