package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// LoginRole creates a LOGIN role (no superuser, CREATEDB or CREATEROLE)
// with a random password, dropped with its grants when the test ends, and
// returns its name and base with the role's credentials.
func LoginRole(t testing.TB, admin *pgxpool.Pool, base, prefix string) (string, string) {
	t.Helper()
	ctx := context.Background()
	name := Name(prefix)
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	password := hex.EncodeToString(b)
	if _, err := admin.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '%s'", name, password)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Runs after the role's connections (registered later) closed.
		if _, err := admin.Exec(context.Background(), "DROP OWNED BY "+name+"; DROP ROLE "+name); err != nil {
			t.Errorf("drop role %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(name, password)
	return name, u.String()
}
