package relay_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outboxrelay/outboxrelay/relay"
)

// A failover's errors (a read-only standby, a server shutting down, a
// dropped connection) are transient; what an operator must fix is not.
func TestTransient(t *testing.T) {
	t.Parallel()
	pg := func(code string) error { return fmt.Errorf("claim: %w", &pgconn.PgError{Code: code, Message: "m"}) }
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"read-only transaction (standby)", pg("25006"), true},
		{"admin shutdown (fast stop)", pg("57P01"), true},
		{"crash shutdown (immediate stop)", pg("57P02"), true},
		{"cannot connect now (in recovery)", pg("57P03"), true},
		{"connection failure", pg("08006"), true},
		{"serialization failure", pg("40001"), true},
		{"connection lost mid-query", fmt.Errorf("begin: %w", io.ErrUnexpectedEOF), true},
		{"timeout", fmt.Errorf("x: %w", context.DeadlineExceeded), true},
		{"bad password", pg("28P01"), false},
		{"missing table", pg("42P01"), false},
		{"unique violation", pg("23505"), false},
		{"something else", errors.New("boom"), false},
		{"nil", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := relay.Transient(tc.err); got != tc.want {
				t.Errorf("Transient(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
