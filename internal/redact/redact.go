// Package redact keeps secrets out of errors and logs. It finds the
// passwords in every form a connection string can carry one and masks them;
// credentials never leave it.
//
// The forms it knows, each masked without parsing the value successfully
// first (a value that fails to parse is exactly the one an error quotes):
//
//   - URLs (postgres://, amqp://, any scheme): the password of the user
//     info, taken up to the last '@' of the URL so that an unencoded '/',
//     '?' or '#' in it is masked too, and every query parameter whose
//     percent-decoded name contains "password" (password, sslpassword).
//   - user:pass@host without a scheme: everything between the first ':'
//     and the last '@'.
//   - key=value DSNs (host=db user=app password=...): the value of every
//     key containing "password", quoted ('a b', with \' and \\) or not.
//     This rule is applied to URLs too, wherever "password=" stands.
//   - comma-separated lists of URLs (RELAY_AMQP_URL): each URL on its own;
//     a part that does not start with a scheme belongs to the one before,
//     so a comma inside a password does not split it.
//
// Masking errs on the side of hiding too much: an odd value may lose more
// than its password, never less. A value with none of these forms holds no
// password field and is returned as is.
package redact

import (
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sort"
	"strings"
)

// Mask replaces every secret.
const Mask = "xxxxx"

// Value returns s with every password masked, safe to print.
func Value(s string) string {
	sp := spans(s)
	if len(sp) == 0 {
		return s
	}
	var b strings.Builder
	last := 0
	for _, r := range sp {
		b.WriteString(s[last:r[0]])
		b.WriteString(Mask)
		last = r[1]
	}
	b.WriteString(s[last:])
	return b.String()
}

// URL returns rawURL with any password masked. A value that does not parse
// as a URL is replaced whole, since it may itself be a secret.
func URL(rawURL string) string {
	if _, err := url.Parse(rawURL); err != nil {
		return "<unparseable URL>"
	}
	return Value(rawURL)
}

// Host returns the host:port of rawURL, for naming a server in logs. The
// user info is cut at the last '@', as Value does, so that a password
// holding an unencoded '/' is not mistaken for a host.
func Host(rawURL string) string {
	_, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		u, err := url.Parse(rawURL)
		if err != nil {
			return "<unparseable URL>"
		}
		return u.Host
	}
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		rest = rest[at+1:]
	}
	if end := strings.IndexAny(rest, "/?#"); end >= 0 {
		rest = rest[:end]
	}
	return rest
}

// Secrets returns the passwords in s, in the forms a library may echo them:
// as written, percent-decoded, percent-encoded, and unquoted. Give them to
// Scrub or ReplaceAttr to clean text that quotes s in some other shape.
func Secrets(s string) []string {
	var out []string
	add := func(v string) {
		if v != "" && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	for _, r := range spans(s) {
		raw := s[r[0]:r[1]]
		add(raw)
		if un, ok := unquote(raw); ok {
			add(un)
		}
		if dec, err := url.PathUnescape(raw); err == nil {
			add(dec)
		}
		if dec, err := url.QueryUnescape(raw); err == nil {
			add(dec)
		}
		add(url.QueryEscape(raw))
		add(url.PathEscape(raw))
	}
	return out
}

// Scrub returns msg with every one of secrets masked, longest first so
// that a secret holding a shorter one is masked whole.
func Scrub(msg string, secrets []string) string {
	if len(secrets) == 0 {
		return msg
	}
	sorted := slices.Clone(secrets)
	sort.Slice(sorted, func(i, j int) bool { return len(sorted[i]) > len(sorted[j]) })
	for _, s := range sorted {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, Mask)
		}
	}
	return msg
}

// ReplaceAttr returns a slog.HandlerOptions.ReplaceAttr that scrubs
// secrets from every string, error and other value before it is written,
// so that a library error quoting a connection string cannot print its
// password. It returns nil when there is nothing to hide.
func ReplaceAttr(secrets []string) func(groups []string, a slog.Attr) slog.Attr {
	if len(secrets) == 0 {
		return nil
	}
	return func(_ []string, a slog.Attr) slog.Attr {
		var s string
		switch a.Value.Kind() {
		case slog.KindString:
			s = a.Value.String()
		case slog.KindAny:
			switch v := a.Value.Any().(type) {
			case error:
				s = v.Error()
			default:
				s = fmt.Sprint(v)
			}
		default:
			return a
		}
		if clean := Scrub(s, secrets); clean != s {
			a.Value = slog.StringValue(clean)
		}
		return a
	}
}

// spans returns the sorted, disjoint byte ranges of s that may hold a
// secret.
func spans(s string) [][2]int {
	var out [][2]int
	for _, it := range items(s) {
		out = append(out, itemSpans(s, it[0], it[1])...)
	}
	return merge(out)
}

// items splits s at each comma that is followed by a scheme, so a list of
// URLs is redacted URL by URL and a comma elsewhere (in a password, or a
// multi-host postgres URL) keeps its URL whole.
func items(s string) [][2]int {
	var out [][2]int
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == ',' && schemeEnd(s[i+1:]) > 0 {
			out = append(out, [2]int{start, i})
			start = i + 1
		}
	}
	return append(out, [2]int{start, len(s)})
}

// schemeEnd returns the length of a leading "scheme://" in s, or 0.
func schemeEnd(s string) int {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.'):
		case i > 0 && strings.HasPrefix(s[i:], "://"):
			return i + 3
		default:
			return 0
		}
	}
	return 0
}

func itemSpans(s string, lo, hi int) [][2]int {
	item := s[lo:hi]
	var out [][2]int
	rest := schemeEnd(item)
	isURL := rest > 0
	// User info: from the first ':' to the last '@'. For a URL the last '@'
	// rather than the end of the authority, because a password with an
	// unencoded '/' or '?' otherwise ends up in the path or query.
	if at := strings.LastIndexByte(item, '@'); at > rest {
		if colon := strings.IndexByte(item[rest:at], ':'); colon >= 0 {
			out = append(out, [2]int{lo + rest + colon + 1, lo + at})
		}
	}
	if isURL {
		out = append(out, querySpans(item, lo)...)
	}
	out = append(out, keywordSpans(item, lo, isURL)...)
	return out
}

// querySpans masks query parameters whose percent-decoded name names a
// password, as database drivers decode it (pass%77ord is password).
func querySpans(item string, lo int) [][2]int {
	q := strings.IndexByte(item, '?')
	if q < 0 {
		return nil
	}
	var out [][2]int
	pos := q + 1
	end := len(item)
	if h := strings.IndexByte(item[pos:], '#'); h >= 0 {
		end = pos + h
	}
	for pos <= end {
		next := strings.IndexByte(item[pos:end], '&')
		stop := end
		if next >= 0 {
			stop = pos + next
		}
		if name, _, ok := strings.Cut(item[pos:stop], "="); ok {
			dec, err := url.QueryUnescape(name)
			if err != nil {
				dec = name
			}
			if secretKey(dec) && stop > pos+len(name)+1 {
				out = append(out, [2]int{lo + pos + len(name) + 1, lo + stop})
			}
		}
		pos = stop + 1
	}
	return out
}

// keywordSpans masks the value after every "password" followed by '=',
// with libpq's conninfo rules: spaces around '=', a value quoted with '
// (where \' and \\ escape) or running to the next space (where a
// backslash escapes the next byte). In a URL the value also ends at '&'
// and '#'. It finds keys containing "password" anywhere, so sslpassword
// and a password hidden inside another key's quoted value are masked too.
func keywordSpans(item string, lo int, isURL bool) [][2]int {
	var out [][2]int
	lower := asciiLower(item) // byte for byte: indexes into lower are indexes into item
	for from := 0; ; {
		k := strings.Index(lower[from:], "password")
		if k < 0 {
			return out
		}
		i := from + k + len("password")
		from = i
		i = skipSpace(item, i)
		if i >= len(item) || item[i] != '=' {
			continue
		}
		i = skipSpace(item, i+1)
		start := i
		if i < len(item) && item[i] == '\'' {
			for i++; i < len(item) && item[i] != '\''; i++ {
				if item[i] == '\\' {
					i++
				}
			}
			i = min(i+1, len(item))
		} else {
			for ; i < len(item) && !isSpace(item[i]) && !(isURL && (item[i] == '&' || item[i] == '#')); i++ {
				if item[i] == '\\' {
					i++
				}
			}
			i = min(i, len(item))
		}
		if i > start {
			out = append(out, [2]int{lo + start, lo + i})
		}
		from = max(from, i)
	}
}

// asciiLower lowercases ASCII letters only, so the result has the same
// length and byte offsets as s (strings.ToLower may change lengths: "İ"
// becomes three bytes).
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func secretKey(name string) bool { return strings.Contains(strings.ToLower(name), "password") }

func skipSpace(s string, i int) int {
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	return i
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// unquote undoes conninfo quoting and backslash escapes, giving the
// password as the driver sends it.
func unquote(v string) (string, bool) {
	if !strings.ContainsAny(v, `'\`) {
		return "", false
	}
	v = strings.TrimPrefix(v, "'")
	v = strings.TrimSuffix(v, "'")
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && i+1 < len(v) {
			i++
		}
		b.WriteByte(v[i])
	}
	return b.String(), true
}

// merge sorts ranges and joins the ones that overlap or touch.
func merge(r [][2]int) [][2]int {
	if len(r) < 2 {
		return r
	}
	sort.Slice(r, func(i, j int) bool { return r[i][0] < r[j][0] })
	out := r[:1]
	for _, x := range r[1:] {
		last := &out[len(out)-1]
		if x[0] <= last[1] {
			last[1] = max(last[1], x[1])
			continue
		}
		out = append(out, x)
	}
	return out
}
