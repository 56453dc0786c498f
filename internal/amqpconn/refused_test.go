package amqpconn

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Refused tells a broker that will never take the client from one that is
// down: a failed read is a frame error too in amqp091-go, and a
// connection limit frees up, so neither ends a start.
func TestRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  error
		want string // a prefix of the reason; "" = retry
	}{
		{"credentials", amqp.ErrCredentials, "the broker refuses the credentials (403 ACCESS_REFUSED: username or password not allowed)"},
		{"broker's 403", &amqp.Error{Code: 403, Reason: "ACCESS_REFUSED - Login was refused", Server: true}, "the broker refuses the credentials"},
		{"vhost fallback", amqp.ErrVhost, "the broker refuses the vhost (403: no access to this vhost)"},
		{"vhost refused", &amqp.Error{Code: 530, Reason: "NOT_ALLOWED - access to vhost 'x' refused for user 'u'", Server: true}, "the broker refuses the vhost"},
		{"connection limit", &amqp.Error{Code: 530, Reason: "NOT_ALLOWED - access to vhost '/' refused for user 'u': connection limit (1) is reached", Server: true}, ""},
		{"garbage frame", amqp.ErrFrame, "the port answers, but not as an AMQP 0-9-1 broker (frame could not be parsed)"},
		{"nested too large", &amqp.Error{Code: 501, Reason: amqp.ErrFrameTooLarge.Error()}, "the port answers, but not as an AMQP 0-9-1 broker (frame size exceeds negotiated frame_max)"},
		{"read failed", &amqp.Error{Code: 501, Reason: "read tcp 127.0.0.1:1->127.0.0.1:2: read: connection reset by peer"}, ""},
		{"forced close", &amqp.Error{Code: amqp.ConnectionForced, Reason: "CONNECTION_FORCED - broker forced connection closure", Server: true}, ""},
		{"not TLS", &DialError{Broker: "h:1", Err: fmt.Errorf("dial: %w", tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"})}, "the port does not speak TLS"},
		{"EOF", io.EOF, ""},
		{"refused", errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), ""},
	} {
		got := Refused(tc.err)
		if (tc.want == "") != (got == "") || !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: Refused(%v) = %q, want %q...", tc.name, tc.err, got, tc.want)
		}
	}
}
