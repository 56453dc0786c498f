// Package console is the relay's web console (relay console): an
// operator's view of the outbox (counts, publish rate, held and blocked
// keys, failing and dead rows, search, a row's detail, the audit log) and
// its actions (requeue, retry now, discard, replay), built on the relay
// package's operator functions, so the console and the CLI act alike.
//
// Safe by default:
//   - every value a row holds is hostile: pages are html/template (it
//     escapes by context), control characters are shown as escapes,
//     payloads and headers are capped, and the Content-Security-Policy
//     allows no script at all (the pages have none; the chart is SVG
//     drawn on the server), no inline style, no frames and no form target
//     but the console itself;
//   - it binds loopback by default; on any other address it refuses to
//     start without a token (read from a file), and then every page and
//     action needs it (a login form sets an HttpOnly, SameSite=Strict
//     cookie derived from it; the token itself never appears on a page);
//   - a state-changing request must be a POST with the page's CSRF token
//     (an HMAC of the session under a per-process key) and, when the
//     browser sends one, an Origin of the console itself;
//   - permission is the database role's: the console acts with the role
//     it connects as, so a console running under the read-only role
//     (relay migrate --console-role) shows no action and, for a
//     hand-made request, gets the database's permission denied;
//   - every action is recorded in relay_audit with the database role.
package console
