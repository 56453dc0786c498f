package amqpconn

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DialError is what Hooks.DialFailed receives: the failed dial's error
// and the broker it was for (host:port, no credentials).
type DialError struct {
	Broker string
	Err    error
}

func (e *DialError) Error() string { return e.Err.Error() }
func (e *DialError) Unwrap() error { return e.Err }

// Refused returns why a failed dial means that the broker will not take
// this client until someone changes the configuration, with the fix, or
// "" when retrying can succeed. Refused: credentials (ACCESS_REFUSED,
// 403, also when they are right for another broker the port reaches), a
// vhost the user may not open (NOT_ALLOWED, 530, but not a connection
// limit, which frees up), and a port that answers but not as an AMQP
// 0-9-1 broker (its first bytes do not parse as frames: a TLS port
// dialled as amqp://, a service that speaks first such as SSH or SMTP;
// or a port that does not speak TLS dialled as amqps://). Everything
// else, a connection refused or reset, a timeout (also a port that waits
// for a request, as HTTP servers do), a broker closing the socket while
// it starts, is a broker that is down, and is retried.
func Refused(err error) string {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		switch {
		case ae.Code == amqp.AccessRefused && strings.Contains(ae.Reason, "vhost"),
			ae.Code == amqp.NotAllowed && !strings.Contains(ae.Reason, "limit"):
			return fmt.Sprintf("the broker refuses the vhost (%d: %s): check the vhost in amqp_url and the user's permissions on it", ae.Code, ae.Reason)
		case ae.Code == amqp.AccessRefused:
			return fmt.Sprintf("the broker refuses the credentials (%d ACCESS_REFUSED: %s): check the user and password in amqp_url; "+
				"if they are right, the port may reach another broker", ae.Code, ae.Reason)
		case !ae.Server:
			// Bytes that came and do not parse as AMQP frames during the
			// handshake (amqp091-go nests the parser's error in the reason).
			// A read that failed is reported as a frame error too, with the
			// socket's error as its reason: that one is not matched here.
			for _, bad := range []*amqp.Error{amqp.ErrFrame, amqp.ErrSyntax, amqp.ErrFrameTooLarge} {
				if strings.Contains(ae.Reason, bad.Reason) {
					return "the port answers, but not as an AMQP 0-9-1 broker (" + bad.Reason + "): check the host and port in amqp_url " +
						"(5672 for amqp://, 5671 for amqps://)"
				}
			}
		}
		return ""
	}
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) {
		return "the port does not speak TLS (" + rh.Msg + "): amqps:// needs the broker's TLS port (5671), amqp:// its plain one (5672)"
	}
	return ""
}
