package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
)

// The URL parameters that name a PEM file: pgx reads the first three,
// amqp091-go the last three, each only when it connects.
var (
	postgresTLSFiles = []string{"sslrootcert", "sslcert", "sslkey"}
	amqpTLSFiles     = []string{"cacertfile", "certfile", "keyfile"}
)

// checkPostgresTLSFiles checks the files a postgres:// URL names, so that
// a wrong path stops the binary at start naming the parameter; pgconn's
// own error for it is not one we can show (see checkPostgres). A
// key=value DSN is left to pgconn.
func checkPostgresTLSFiles(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return nil
	}
	return checkTLSFiles(u.Query(), postgresTLSFiles)
}

// checkAMQPTLSFiles checks the files an amqps:// URL names at start,
// rather than at every connection attempt. amqp091-go even ignores a CA
// file without a certificate in it (every server is then refused as
// unknown) and a certfile without its keyfile (no client certificate is
// sent).
func checkAMQPTLSFiles(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return nil // checkURL has said so
	}
	q := u.Query()
	if err := checkTLSFiles(q, amqpTLSFiles); err != nil {
		return err
	}
	return checkAMQPKeyPair(q.Get("certfile"), q.Get("keyfile"))
}

// checkTLSFiles checks each of params that q sets: a readable PEM file.
func checkTLSFiles(q url.Values, params []string) error {
	for _, p := range params {
		path := q.Get(p)
		if path == "" || (p == "sslrootcert" && path == "system") {
			continue
		}
		if err := checkPEMFile(path, p == "sslrootcert" || p == "cacertfile"); err != nil {
			return fmt.Errorf("%s: %w", p, err) // the value, shown redacted by the caller, has the path
		}
	}
	return nil
}

// checkPEMFile: a regular file (not a pipe or a device, which could block
// or never end) holding PEM data, and certificates when ca is set.
func checkPEMFile(path string, ca bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		return errors.Unwrap(err) // the reason without the path, which the caller names
	}
	if !fi.Mode().IsRegular() {
		return errors.New("is not a regular file")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return errors.Unwrap(err)
	}
	if block, _ := pem.Decode(b); block == nil {
		return errors.New("holds no PEM data")
	}
	if ca && !x509.NewCertPool().AppendCertsFromPEM(b) {
		return errors.New("holds no PEM certificate")
	}
	return nil
}

func checkAMQPKeyPair(cert, key string) error {
	switch {
	case cert == "" && key == "":
		return nil
	case cert == "" || key == "":
		return errors.New("certfile and keyfile go together (a client certificate needs both)")
	}
	if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
		return fmt.Errorf("certfile and keyfile: %w", err)
	}
	return nil
}
