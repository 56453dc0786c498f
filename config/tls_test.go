package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// A TLS file named in a URL that is missing, not PEM, not a certificate
// where a CA is wanted, or a client key that does not go with its
// certificate stops Load naming the key and the parameter; good files pass.
func TestLoadChecksTLSFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := testenv.SelfSignedCA(t, dir, "a")
	_, otherKey := testenv.SelfSignedCA(t, dir, "b")
	notPEM := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	db, mq := "postgres://u:s3cret@db.example.com/app", "amqps://u:s3cret@mq.example.com/"
	cases := []struct {
		db, amqp, want string // want "" means Load succeeds
	}{
		{db + "?sslmode=verify-full&sslrootcert=" + cert, mq + "?cacertfile=" + cert + "&certfile=" + cert + "&keyfile=" + key, ""},
		{db + "?sslmode=verify-full&sslrootcert=system", mq, ""},
		{db + "?sslmode=verify-full&sslrootcert=" + dir + "/missing.pem", mq, "database_url (from RELAY_DATABASE_URL): sslrootcert: no such file or directory"},
		{db + "?sslcert=" + notPEM, mq, "database_url (from RELAY_DATABASE_URL): sslcert: holds no PEM data"},
		{db + "?sslrootcert=" + dir, mq, "sslrootcert: is not a regular file"},
		{db, mq + "?cacertfile=" + key, "amqp_url (from RELAY_AMQP_URL): cacertfile: holds no PEM certificate"},
		{db, mq + "?cacertfile=" + notPEM, "cacertfile: holds no PEM data"},
		{db, mq + "?certfile=" + cert, "amqp_url (from RELAY_AMQP_URL): certfile and keyfile go together"},
		{db, mq + "?certfile=" + cert + "&keyfile=" + otherKey, "certfile and keyfile: tls: private key does not match public key"},
	}
	for _, tc := range cases {
		_, err := Load(nil, []string{"RELAY_DATABASE_URL=" + tc.db, "RELAY_AMQP_URL=" + tc.amqp}, KeyDatabaseURL, KeyAMQPURL)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s %s: %v", tc.db, tc.amqp, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s %s: error %v, want %q", tc.db, tc.amqp, err, tc.want)
		case err != nil && strings.Contains(err.Error(), "s3cret"):
			t.Errorf("password shown: %v", err)
		}
	}
}
