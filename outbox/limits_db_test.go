package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx", for goose
	"github.com/pressly/goose/v3"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/outbox"
)

// doubleEdge is 2^1024 - 2^970: from here on Go's ParseFloat gives an
// infinity instead of rounding to the largest double.
const doubleEdge = "179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792"

// belowEdge is the last integer before it, which rounds to the largest double.
var belowEdge = doubleEdge[:len(doubleEdge)-1] + "1"

func TestEnqueueRefusesWhatAMQPCannotCarry(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	ctx := context.Background()
	s256 := strings.Repeat("x", 256)
	deep := func(n int) any {
		var v any = []any{}
		for i := 1; i < n; i++ {
			v = []any{v}
		}
		return v
	}
	cases := []struct {
		name         string
		msg          outbox.Message
		field, limit string
	}{
		{"exchange 256 bytes", outbox.Message{Exchange: s256}, "exchange", "length"},
		{"exchange control character", outbox.Message{Exchange: "ex\x1b[31m"}, "exchange", "control"},
		{"routing key 256 bytes", outbox.Message{RoutingKey: s256}, "routing_key", "length"},
		{"routing key DEL", outbox.Message{RoutingKey: "k\x7f"}, "routing_key", "control"},
		{"content type 256 bytes", outbox.Message{ContentType: s256}, "content_type", "length"},
		{"content type newline", outbox.Message{ContentType: "text/plain\n"}, "content_type", "control"},
		{"header name 256 bytes", outbox.Message{Headers: map[string]any{s256: 1}}, "headers", "name"},
		{"header array of 9,000", outbox.Message{Headers: map[string]any{"a": make([]bool, 9000)}}, "headers", "width"},
		{"headers 33 deep", outbox.Message{Headers: map[string]any{"d": deep(33)}}, "headers", "depth"},
		{"header of 200 KB", outbox.Message{Headers: map[string]any{"big": strings.Repeat("v", 200000)}}, "headers", "size"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.msg
			m.Payload = []byte("x")
			if m.RoutingKey == "" {
				m.RoutingKey = "k"
			}
			_, err := outbox.Enqueue(ctx, pool, m)
			var le *outbox.LimitError
			if !errors.Is(err, outbox.ErrInvalidMessage) || !errors.As(err, &le) || le.Field != tc.field || le.Limit != tc.limit {
				t.Fatalf("Enqueue: %v, want ErrInvalidMessage with a %s %s LimitError", err, tc.field, tc.limit)
			}
		})
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows written by refused messages (%v)", n, err)
	}

	// Everything at its limit is accepted by Enqueue and by the table's
	// constraints: the Go and SQL limits meet at the same edge.
	s255 := strings.Repeat("é", 127) + "x"
	_, err := outbox.Enqueue(ctx, pool,
		outbox.Message{Exchange: s255, RoutingKey: s255, ContentType: s255, Payload: []byte("x"),
			Headers: map[string]any{strings.Repeat("n", 255): deep(32), "a": make([]bool, 8192), "n": 1.7976931348623157e308}},
		outbox.Message{RoutingKey: "k", Payload: []byte("x"), Headers: map[string]any{"h": strings.Repeat("v", outbox.MaxHeaderTableBytes-11)}},
	)
	if err != nil {
		t.Fatalf("messages at the limits: %v", err)
	}
}

// TestInsertRefusedByConstraints: plain SQL is refused at insert, and the
// error names the constraint; the row at the edge is accepted.
func TestInsertRefusedByConstraints(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	s255, s256 := strings.Repeat("x", 255), strings.Repeat("x", 256)
	name255, name256 := strings.Repeat("n", 255), strings.Repeat("n", 256)
	cases := []struct {
		name       string
		exchange   string
		routingKey string
		ctype      string
		headers    string
		constraint string // "" means accepted
	}{
		{"all short strings at 255", s255, s255, s255, `{}`, ""},
		{"exchange 256", s256, "k", "t", `{}`, "outbox_exchange_len"},
		{"exchange 300 multi-byte", "x" + strings.Repeat("é", 150), "k", "t", `{}`, "outbox_exchange_len"},
		{"routing key 256", "", s256, "t", `{}`, "outbox_routing_key_len"},
		{"content type 256", "", "k", s256, `{}`, "outbox_content_type_len"},
		{"exchange ESC", "ex\x1b", "k", "t", `{}`, "outbox_exchange_chars"},
		{"exchange DEL", "ex\x7f", "k", "t", `{}`, "outbox_exchange_chars"},
		{"exchange 0x01", "\x01", "k", "t", `{}`, "outbox_exchange_chars"},
		{"exchange space and non-ASCII", "börse ex", "k", "t", `{}`, ""},
		{"routing key newline", "", "a\nb", "t", `{}`, "outbox_routing_key_chars"},
		{"content type tab", "", "k", "text/plain;\tq=1", `{}`, "outbox_content_type_chars"},
		{"header name 255", "", "k", "t", `{"` + name255 + `":1}`, ""},
		{"header name 256", "", "k", "t", `{"` + name256 + `":1}`, "outbox_header_name_len"},
		{"nested header name 256", "", "k", "t", `{"o":[{"` + name256 + `":1}]}`, "outbox_header_name_len"},
		{"array of 8,192", "", "k", "t", outbox.WideArray(8192), ""},
		{"array of 8,193", "", "k", "t", outbox.WideArray(8193), "outbox_headers_width"},
		{"table of 8,193", "", "k", "t", outbox.WideObject(8193, true), "outbox_headers_width"},
		{"nested table of 8,193", "", "k", "t", outbox.WideObject(8193, false), "outbox_headers_width"},
		{"arrays 32 deep", "", "k", "t", outbox.Nested("[", 32), ""},
		{"arrays 33 deep", "", "k", "t", outbox.Nested("[", 33), "outbox_headers_depth"},
		{"tables 33 deep", "", "k", "t", outbox.Nested("{", 33), "outbox_headers_depth"},
		{"number just below the double edge", "", "k", "t", `{"n":` + belowEdge + `}`, ""},
		{"number at the double edge", "", "k", "t", `{"n":` + doubleEdge + `}`, "outbox_headers_number"},
		{"number 1e400", "", "k", "t", `{"n":[1e400]}`, "outbox_headers_number"},
		{"number -1e400", "", "k", "t", `{"n":-1e400}`, "outbox_headers_number"},
		{"header table at the budget", "", "k", "t", outbox.StringOfSize(outbox.MaxHeaderTableBytes), ""},
		{"header table one byte over", "", "k", "t", outbox.StringOfSize(outbox.MaxHeaderTableBytes + 1), "outbox_headers_size"},
		{"header of 200 KB", "", "k", "t", `{"big":"` + strings.Repeat("v", 200000) + `"}`, "outbox_headers_size"},
		// 43 KB of text, 3 bytes of text per 9-byte int64: over the budget.
		{"dense numbers over the budget", "", "k", "t", `{"a":[[` + zeros(8000) + `],[` + zeros(6413) + `]]}`, "outbox_headers_size"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := pool.Exec(context.Background(),
				`INSERT INTO outbox (exchange, routing_key, content_type, headers, payload) VALUES ($1, $2, $3, $4::jsonb, 'x')`,
				tc.exchange, tc.routingKey, tc.ctype, tc.headers)
			if tc.constraint == "" {
				if err != nil {
					t.Fatalf("insert: %v", err)
				}
				return
			}
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "23514" || pe.ConstraintName != tc.constraint || !strings.Contains(pe.Message, tc.constraint) {
				t.Fatalf("insert: %v, want a check violation of %s", err, tc.constraint)
			}
		})
	}

	// Dead and published rows are exempt: that is what lets old rows be
	// parked and marked (see TestMigrationParksOldRows).
	if _, err := pool.Exec(context.Background(),
		`INSERT INTO outbox (exchange, routing_key, payload, dead_at, published_at) VALUES ($1, 'k', 'x', now(), NULL), ($1, 'k', 'x', NULL, now())`, s256); err != nil {
		t.Fatalf("dead or published row over a limit: %v", err)
	}
}

func zeros(n int) string { return strings.TrimSuffix(strings.Repeat("0,", n), ",") }

// TestSQLAgreesWithGo: the migration's functions and Go's validator give
// the same verdict and the same encoded size on a few hundred generated
// header documents, read back from jsonb (the text the relay decodes).
func TestSQLAgreesWithGo(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t, testenv.NewSchema(t, true))
	r := rand.New(rand.NewPCG(9, 3))
	docs := make([]string, 0, 400)
	for len(docs) < cap(docs) {
		docs = append(docs, genDoc(r))
	}
	for i := 0; i < 40; i++ {
		docs = append(docs, genDeep(r, 30+r.IntN(5)))
	}
	docs = append(docs, outbox.WideArray(8193), outbox.WideObject(8193, true), outbox.Nested("{", 33), outbox.Nested("[", 32),
		`{"n":`+doubleEdge+`}`, `{"n":`+belowEdge+`}`, `{"n":-`+doubleEdge+`}`,
		`{"a":[0]}`, `{"":[[0]]}`, `{"a":[`+strings.TrimSuffix(strings.Repeat("[0],", 3000), ",")+`]}`)
	rows, err := pool.Query(context.Background(), `
SELECT d::text, outbox_headers_amqp_size(d), outbox_headers_amqp_width(d) > 8192, outbox_headers_amqp_name_max(d) > 255,
       jsonb_path_exists(d, 'strict $.**{33 to last} ? (@.type() == "object" || @.type() == "array")'),
       outbox_headers_amqp_number_over(d)
FROM unnest($1::jsonb[]) AS d`, docs)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := map[string]int{}
	for rows.Next() {
		var (
			text                        string
			sqlSize                     int
			wide, name, deep, numberBad bool
		)
		if err := rows.Scan(&text, &sqlSize, &wide, &name, &deep, &numberBad); err != nil {
			t.Fatal(err)
		}
		sqlRefuses := map[string]bool{"width": wide, "name": name, "depth": deep, "value": numberBad}
		size, err := outbox.HeaderTableSize([]byte(text))
		var le *outbox.LimitError
		switch {
		case errors.As(err, &le):
			seen[le.Limit]++
			if !sqlRefuses[le.Limit] {
				t.Errorf("Go refuses (%v) what SQL accepts: %.200s", err, text)
			}
		case err != nil:
			t.Fatalf("unexpected error %v", err)
		default:
			seen["ok"]++
			for limit, refused := range sqlRefuses {
				if refused {
					t.Errorf("SQL refuses (%s) what Go accepts: %.200s", limit, text)
				}
			}
			if text != "{}" && size != sqlSize {
				t.Errorf("size: Go %d, SQL %d: %.200s", size, sqlSize, text)
			}
			// The migration skips the size function for text of 25,944
			// bytes or fewer, on the grounds that a table encodes to at
			// most 14/3 bytes per byte of jsonb text.
			if 3*size > 14*len(text) {
				t.Errorf("size %d over 14/3 of the text's %d bytes: %.200s", size, len(text), text)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("verdicts: %v", seen)
}

// genDoc generates a header document that is valid JSON, usually within
// the limits and sometimes just past one.
func genDoc(r *rand.Rand) string {
	var b strings.Builder
	genObject(r, &b, 0)
	return b.String()
}

func genValue(r *rand.Rand, b *strings.Builder, depth int) {
	switch k := r.IntN(10); {
	case k < 2 && depth < 36:
		genObject(r, b, depth+1)
	case k < 4 && depth < 36:
		n := r.IntN(4)
		if r.IntN(30) == 0 {
			n = 8190 + r.IntN(5)
		}
		b.WriteString("[")
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteString(",")
			}
			if n > 100 {
				b.WriteString("null")
				continue
			}
			genValue(r, b, depth+1)
		}
		b.WriteString("]")
	case k < 6:
		fmt.Fprintf(b, "%q", genString(r, r.IntN(40)))
	case k < 8:
		nums := []string{"0", "-0", "1", "-7", "1.0", "2.5", "1e3", "1E+2", "0.1e-2", "9223372036854775807", "9223372036854775808",
			"-9223372036854775809", "12345678901234567890", "1e308", "1e400", "-1e309", "5e-324", "1e-400", belowEdge}
		b.WriteString(nums[r.IntN(len(nums))])
	case k < 9:
		b.WriteString([]string{"true", "false"}[r.IntN(2)])
	default:
		b.WriteString("null")
	}
}

// genDeep generates a document whose deepest container is at depth d,
// mixing tables and arrays.
func genDeep(r *rand.Rand, d int) string {
	var open, close strings.Builder
	for i := 0; i < d; i++ {
		if r.IntN(2) == 0 {
			open.WriteString(`[1,`)
			close.WriteString(`]`)
		} else {
			fmt.Fprintf(&open, `{%q:`, genString(r, 3))
			close.WriteString(`}`)
		}
	}
	c := close.String()
	return `{"d":` + open.String() + "null" + reverse(c) + `}`
}

func reverse(s string) string {
	b := []byte(s)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return string(b)
}

func genObject(r *rand.Rand, b *strings.Builder, depth int) {
	n := r.IntN(5)
	b.WriteString("{")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		l := r.IntN(12)
		if r.IntN(40) == 0 {
			l = 250 + r.IntN(10)
		}
		fmt.Fprintf(b, "%q:", genString(r, l))
		genValue(r, b, depth+1)
	}
	b.WriteString("}")
}

// genString returns n runes mixing ASCII, escapes, and 2-, 3- and 4-byte
// UTF-8, so byte and character counts differ.
func genString(r *rand.Rand, n int) string {
	alphabet := []rune{'a', 'b', 'z', '0', ' ', '"', '\\', '/', '\n', '\t', 'é', 'ß', '€', '中', '😀', '\u2028'}
	s := make([]rune, n)
	for i := range s {
		s[i] = alphabet[r.IntN(len(alphabet))]
	}
	return string(s)
}

// TestMigrationParksOldRows: rows written before the limits existed do not
// break the migration or the relay. Pending rows over a limit end dead
// with the limit as last_error; published and already dead rows are left
// alone; every old row can still be updated (marked), and requeueing one
// that still breaks a limit fails with the constraint's name unless the
// same UPDATE fixes it.
func TestMigrationParksOldRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := testenv.NewSchema(t, false)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, os.DirFS(filepath.Join(testenv.Root(), "migrations")),
		goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 2); err != nil {
		t.Fatal(err)
	}
	pool := testenv.Pool(t, dsn)

	type old struct {
		name, exchange, routingKey, contentType, headers string
		published, dead                                  bool
		wantError                                        string // "" means left as it was
	}
	rows := []old{
		{name: "good", headers: `{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}`},
		{name: "exchange", exchange: "x" + strings.Repeat("e", 1300), wantError: "bad_property: exchange: 1,301 bytes, over the 255-byte limit"},
		{name: "routing key", routingKey: "a\x1bb", wantError: "bad_property: routing_key: holds a control character"},
		{name: "content type", contentType: strings.Repeat("t", 300), wantError: "bad_property: content_type: 300 bytes"},
		{name: "big header", headers: `{"big":"` + strings.Repeat("v", 200000) + `"}`, wantError: "too_large: headers: the header table is 200,013 bytes"},
		{name: "wide", headers: outbox.WideArray(9000), wantError: "bad_headers: headers: a table or array has over 8,192 entries"},
		{name: "deep", headers: outbox.Nested("[", 33), wantError: "bad_headers: headers: tables and arrays nest over 32 deep"},
		{name: "name", headers: `{"` + strings.Repeat("n", 256) + `":1}`, wantError: "bad_headers: headers: a name is over the 255-byte limit"},
		{name: "number", headers: `{"n":1e400}`, wantError: "bad_headers: headers: a number is out of the range of a double"},
		{name: "published", exchange: strings.Repeat("e", 300), published: true},
		{name: "dead", exchange: strings.Repeat("e", 300), dead: true},
	}
	ids := map[string]int64{}
	for _, o := range rows {
		if o.routingKey == "" {
			o.routingKey = "k"
		}
		if o.contentType == "" {
			o.contentType = "application/json"
		}
		if o.headers == "" {
			o.headers = "{}"
		}
		var id int64
		err := pool.QueryRow(ctx, `
INSERT INTO outbox (exchange, routing_key, content_type, headers, payload, published_at, dead_at, last_error)
VALUES ($1, $2, $3, $4::jsonb, 'x', CASE WHEN $5 THEN now() END, CASE WHEN $6 THEN now() END, CASE WHEN $6 THEN 'earlier' END)
RETURNING id`, o.exchange, o.routingKey, o.contentType, o.headers, o.published, o.dead).Scan(&id)
		if err != nil {
			t.Fatalf("insert %s: %v", o.name, err)
		}
		ids[o.name] = id
	}

	if _, err := p.Up(ctx); err != nil {
		t.Fatalf("migrate with old rows over the limits: %v", err)
	}

	for _, o := range rows {
		var (
			dead, published bool
			lastError       *string
		)
		if err := pool.QueryRow(ctx, `SELECT dead_at IS NOT NULL, published_at IS NOT NULL, last_error FROM outbox WHERE id = $1`, ids[o.name]).
			Scan(&dead, &published, &lastError); err != nil {
			t.Fatal(err)
		}
		switch {
		case o.wantError != "":
			if !dead || lastError == nil || !strings.Contains(*lastError, o.wantError) || !strings.Contains(*lastError, "parked by migration 00003") {
				t.Errorf("%s: dead %v, last_error %v; want dead with %q", o.name, dead, strPtr(lastError), o.wantError)
			}
		case o.dead:
			if !dead || lastError == nil || *lastError != "earlier" {
				t.Errorf("%s: dead %v, last_error %v; want it untouched", o.name, dead, strPtr(lastError))
			}
		default:
			if dead || published != o.published || lastError != nil {
				t.Errorf("%s: dead %v, published %v, last_error %v; want it untouched", o.name, dead, published, strPtr(lastError))
			}
		}
	}

	// Marking old rows still works: the relay's failure mark, and an
	// operator's edit, on every old row that breaks a limit.
	for _, name := range []string{"exchange", "big header", "wide", "published", "dead"} {
		if _, err := pool.Exec(ctx, `UPDATE outbox SET attempts = attempts + 1, last_error = 'marked', available_at = now() WHERE id = $1`, ids[name]); err != nil {
			t.Errorf("mark old row %s: %v", name, err)
		}
	}
	// A requeue that leaves the row over its limit is refused by name...
	_, err = pool.Exec(ctx, `UPDATE outbox SET dead_at = NULL, attempts = 0 WHERE id = $1`, ids["big header"])
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.ConstraintName != "outbox_headers_size" {
		t.Errorf("requeue of a row over a limit: %v, want a violation of outbox_headers_size", err)
	}
	// ...and one that fixes it in the same UPDATE goes through.
	if _, err := pool.Exec(ctx, `UPDATE outbox SET dead_at = NULL, attempts = 0, headers = '{}' WHERE id = $1`, ids["big header"]); err != nil {
		t.Errorf("requeue with the headers fixed: %v", err)
	}

	// Down and up again.
	if _, err := p.DownTo(ctx, 2); err != nil {
		t.Fatalf("down: %v", err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (exchange, routing_key, payload) VALUES ($1, 'k', 'x')`, strings.Repeat("e", 300)); err != nil {
		t.Fatalf("after down, the limits should be gone: %v", err)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatalf("up again: %v", err)
	}
	assertPending(t, pool, ids["good"])
}

func assertPending(t *testing.T, pool *pgxpool.Pool, id int64) {
	t.Helper()
	var pending bool
	if err := pool.QueryRow(context.Background(), `SELECT published_at IS NULL AND dead_at IS NULL FROM outbox WHERE id = $1`, id).Scan(&pending); err != nil || !pending {
		t.Fatalf("row %d pending %v (%v), want pending", id, pending, err)
	}
}

func strPtr(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%q", *s)
}
