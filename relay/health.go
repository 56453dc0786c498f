package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outboxrelay/outboxrelay/internal/amqpconn"
)

// ErrReadOnly is what Ready reports while the pool reaches a server that
// takes no writes (a hot standby, or default_transaction_read_only): point
// database_url at every node with target_session_attrs=read-write.
var ErrReadOnly = errors.New("relay: the database server is read-only (a standby?)")

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

// transientCodes are the SQLSTATEs of a server going away or not taking
// writes yet: what a failover looks like from the client. Class 08
// (connection exception) is transient as a whole.
var transientCodes = map[string]bool{
	"25006": true, // read_only_sql_transaction: a standby, or a primary fenced read-only
	"57P01": true, // admin_shutdown: pg_ctl stop -m fast, pg_terminate_backend
	"57P02": true, // crash_shutdown: another backend crashed, or -m immediate
	"57P03": true, // cannot_connect_now: starting up, shutting down, in recovery
	"40001": true, // serialization_failure
	"40P01": true, // deadlock_detected
}

// Transient reports whether err is a database failure that retrying (on
// a new connection, perhaps to another host) can fix: the server went
// away, refused a write because it is read-only, or could not be reached.
// A batch failing so is rolled back and retried, never charged to its
// rows. Permanent errors are never transient.
func Transient(err error) bool {
	if err == nil || Permanent(err) != nil {
		return false
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pg.Code[:2] == "08" || transientCodes[pg.Code]
	}
	var connect *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connect) || errors.As(err, &netErr) || pgconn.Timeout(err) ||
		pgconn.SafeToRetry(err) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, net.ErrClosed)
}

// ErrBrokerRefused is wrapped by the error Run returns when, from the
// start, every dial was refused for good for StartupGrace: the broker
// refuses the credentials or the vhost, or the port answers but is not
// an AMQP broker. The error names the broker and the fix; while the
// relay waits, Ready reports it.
var ErrBrokerRefused = errors.New("relay: the broker refuses the relay")

// health is what the workers learned about the database, and the broker
// connection about its dials, for Ready and for Run's early exit.
type health struct {
	mu        sync.Mutex
	everOK    bool      // a batch has committed since the start
	err       error     // the last permanent error, until a batch succeeds
	firstSeen time.Time // when the current run of permanent errors began
	fatal     chan error

	brokerUp     bool      // a broker connection has opened since the start
	brokerErr    error     // the last dial's refusal, while every dial is refused
	refusedSince time.Time // when the current run of refused dials began
}

// noteDialFailed records a failed broker dial. A refusal (see
// amqpconn.Refused) that has lasted StartupGrace, with no connection
// since the start and no dial in between failing for another reason (a
// broker of the list that is only down may come up), ends Run.
func (h *health) noteDialFailed(err error) {
	reason := amqpconn.Refused(err)
	h.mu.Lock()
	defer h.mu.Unlock()
	if reason == "" {
		h.brokerErr = nil
		return
	}
	broker := "broker"
	var de *amqpconn.DialError
	if errors.As(err, &de) {
		broker = de.Broker
	}
	if h.brokerErr == nil {
		h.refusedSince = time.Now()
	}
	h.brokerErr = fmt.Errorf("%w: %s: %s", ErrBrokerRefused, broker, reason)
	if h.brokerUp || time.Since(h.refusedSince) < StartupGrace {
		return
	}
	select {
	case h.fatal <- h.brokerErr:
	default:
	}
}

// noteBrokerConnected records that a broker connection opened (or ended).
func (h *health) noteBrokerConnected(up bool) {
	if !up {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.brokerUp, h.brokerErr = true, nil
}

// brokerRefused is the last dial's refusal while every dial is refused.
func (h *health) brokerRefused() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.brokerErr
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
