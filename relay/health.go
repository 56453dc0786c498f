package relay

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrPermanent is wrapped by database errors that no retry can fix without
// an operator: wrong password or role, missing database, schema, table,
// column or privilege. Run returns one when it persists from the start
// for StartupGrace; later, Ready reports it while it lasts.
var ErrPermanent = errors.New("relay: permanent database error")

// StartupGrace is how long a permanent database error may last from the
// start before Run gives up (a database restarting under a deployment may
// refuse briefly).
const StartupGrace = 5 * time.Second

// permanentCodes are the SQLSTATEs classified as permanent. Classes 28
// (invalid authorization) and 3D (invalid catalog: no such database) are
// whole classes; the others are single codes of class 42 and 3F.
var permanentCodes = map[string]bool{
	"42P01": true, // undefined_table: not migrated
	"42703": true, // undefined_column: migrated by an older relay
	"42501": true, // insufficient_privilege
	"3F000": true, // invalid_schema_name
}

// Permanent wraps err in ErrPermanent when it is permanent, and returns
// nil otherwise. It is the one classification of database errors: the
// relay's workers and the binary's start check both use it.
func Permanent(err error) error {
	var pg *pgconn.PgError
	if !errors.As(err, &pg) {
		return nil
	}
	if class := pg.Code[:2]; class == "28" || class == "3D" || permanentCodes[pg.Code] {
		hint := ""
		switch pg.Code {
		case "42P01", "42703":
			hint = " (run `relay migrate`)"
		}
		return fmt.Errorf("%w: %s (SQLSTATE %s)%s", ErrPermanent, pg.Message, pg.Code, hint)
	}
	return nil
}

// health is what the workers learned about the database, for Ready and
// for Run's early exit.
type health struct {
	mu        sync.Mutex
	everOK    bool      // a batch has committed since the start
	err       error     // the last permanent error, until a batch succeeds
	firstSeen time.Time // when the current run of permanent errors began
	fatal     chan error
}

// noteBatchError records a failed batch and reports whether the worker
// should stop because Run is giving up.
func (r *Relay) noteBatchError(err error) bool {
	perm := Permanent(err)
	h := &r.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if perm == nil {
		return false
	}
	if h.err == nil {
		h.firstSeen = time.Now()
	}
	h.err = perm
	if h.everOK || time.Since(h.firstSeen) < StartupGrace {
		return false
	}
	select {
	case h.fatal <- perm:
	default:
	}
	return true
}

// noteBatchOK clears the permanent error: the database accepts us again.
func (r *Relay) noteBatchOK() {
	h := &r.health
	h.mu.Lock()
	defer h.mu.Unlock()
	h.everOK, h.err = true, nil
}

func (h *health) permanent() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}
