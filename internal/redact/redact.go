// Package redact renders URLs safe to log: credentials never leave it.
package redact

import "net/url"

// URL returns rawURL with any password (user info or a password query
// parameter) replaced by xxxxx. A value that does not parse is replaced
// whole, since it may itself be a secret.
func URL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "<unparseable URL>"
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// Host returns the host:port of rawURL, for naming a server in logs.
func Host(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "<unparseable URL>"
	}
	return u.Host
}
