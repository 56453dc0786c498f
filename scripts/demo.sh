#!/usr/bin/env bash
# End-to-end demo: start the services, run the relay, insert three outbox rows
# with plain SQL and watch them arrive in a RabbitMQ quorum queue.
#
# Expects bin/relay (make build). Run via `make demo` or scripts/demo.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

STATE="$ROOT/.services"
RELAY_BIN="${RELAY_BIN:-$ROOT/bin/relay}"
RELAY_LOG="$STATE/demo-relay.log"
RELAY_PID_FILE="$STATE/demo-relay.pid"
HTTP_ADDR=127.0.0.1:9600
QUEUE=demo.orders
MGMT_USER=outbox
MGMT_PASS=outbox-secret-pw
MGMT=http://127.0.0.1:15680

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'demo: ERROR: %s\n' "$*" >&2; exit 1; }

alive() {
	local st
	st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
	[ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# mgmt METHOD PATH [JSON]: call the RabbitMQ management API, print the body,
# fail (with the body on stderr) on an HTTP error.
mgmt() {
	local method="$1" path="$2" data="${3:-}" out code
	out="$(mktemp)"
	if [ -n "$data" ]; then
		code="$(curl -sS -o "$out" -w '%{http_code}' -u "$MGMT_USER:$MGMT_PASS" -X "$method" \
			-H 'content-type: application/json' --data "$data" "$MGMT$path")" || code=000
	else
		code="$(curl -sS -o "$out" -w '%{http_code}' -u "$MGMT_USER:$MGMT_PASS" -X "$method" "$MGMT$path")" || code=000
	fi
	if [ "${code:0:1}" != 2 ]; then
		printf 'demo: %s %s -> HTTP %s: %s\n' "$method" "$path" "$code" "$(cat "$out")" >&2
		rm -f "$out"
		return 1
	fi
	cat "$out"
	rm -f "$out"
}

stop_demo_relay() {
	[ -f "$RELAY_PID_FILE" ] || return 0
	local pid i
	pid="$(cat "$RELAY_PID_FILE" 2>/dev/null || true)"
	if [ -n "$pid" ] && alive "$pid" && grep -qa relay "/proc/$pid/cmdline" 2>/dev/null; then
		echo "stopping the previous demo relay (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 150; i++)); do
			alive "$pid" || break
			sleep 0.1
		done
		if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
	fi
	rm -f "$RELAY_PID_FILE"
}

[ -x "$RELAY_BIN" ] || die "$RELAY_BIN not found: run 'make build' first"
command -v jq >/dev/null 2>&1 || command -v python3 >/dev/null 2>&1 ||
	die "need jq or python3 to read the management API's JSON"

step "Starting PostgreSQL and RabbitMQ (scripts/services.sh up)"
scripts/services.sh up
# shellcheck disable=SC1091
. "$STATE/env"

export RELAY_DATABASE_URL="$RELAY_TEST_DATABASE_URL"
export RELAY_AMQP_URL="$RELAY_TEST_AMQP_URL"
export RELAY_HTTP_ADDR="$HTTP_ADDR"
export PGCLIENTENCODING=UTF8

step "Applying migrations: bin/relay migrate"
"$RELAY_BIN" migrate

step "Declaring durable quorum queue '$QUEUE' (management API)"
echo "PUT $MGMT/api/queues/%2F/$QUEUE {\"durable\":true,\"arguments\":{\"x-queue-type\":\"quorum\"}}"
mgmt PUT "/api/queues/%2F/$QUEUE" '{"durable":true,"arguments":{"x-queue-type":"quorum"}}' >/dev/null ||
	die "could not declare $QUEUE (if it exists with other arguments, delete it in the management UI)"
# Leftovers from an earlier demo run would confuse the count below.
mgmt DELETE "/api/queues/%2F/$QUEUE/contents" >/dev/null || true

step "Starting the relay in the background (log: $RELAY_LOG)"
stop_demo_relay
if curl -fs -o /dev/null --max-time 2 "http://$HTTP_ADDR/readyz" 2>/dev/null ||
	(exec 3<>"/dev/tcp/${HTTP_ADDR%:*}/${HTTP_ADDR##*:}") 2>/dev/null; then
	die "something else is already listening on $HTTP_ADDR (another relay?); stop it first"
fi
mkdir -p "$STATE"
printf '\n---- demo relay started %s\n' "$(date -u +%FT%TZ)" >>"$RELAY_LOG"
setsid nohup "$RELAY_BIN" run </dev/null >>"$RELAY_LOG" 2>&1 &
relay_pid=$!
echo "$relay_pid" >"$RELAY_PID_FILE"
echo "relay pid $relay_pid"

printf 'waiting for http://%s/readyz ' "$HTTP_ADDR"
ready=
for ((i = 0; i < 60; i++)); do
	if curl -fs -o /dev/null --max-time 2 "http://$HTTP_ADDR/readyz"; then
		ready=1
		break
	fi
	if ! alive "$relay_pid"; then
		echo
		tail -n 30 "$RELAY_LOG" >&2
		rm -f "$RELAY_PID_FILE"
		die "the relay exited; see $RELAY_LOG"
	fi
	printf '.'
	sleep 0.5
done
echo
if [ -z "$ready" ]; then
	tail -n 30 "$RELAY_LOG" >&2
	die "relay not ready after 30s; see $RELAY_LOG"
fi
echo "relay is ready"

step "Inserting 3 outbox rows in ONE transaction (plain SQL via psql)"
SQL="$(
	cat <<'EOF'
BEGIN;
INSERT INTO outbox (exchange, routing_key, payload) VALUES
  ('', 'demo.orders', convert_to('{"order":1,"note":"café \\ backslash"}', 'UTF8')),
  ('', 'demo.orders', convert_to('{"order":2,"note":"naïve \"quotes\""}', 'UTF8')),
  ('', 'demo.orders', convert_to('{"order":3,"note":"€ 42 ✓"}', 'UTF8'))
RETURNING id, message_id, convert_from(payload, 'UTF8') AS payload;
COMMIT;
EOF
)"
printf '%s\n\n' "$SQL" | sed 's/^/    /'
printf '%s\n' "$SQL" | psql -X -v ON_ERROR_STOP=1 "$RELAY_TEST_DATABASE_URL"

step "Reading the messages from '$QUEUE' (management API, POST /api/queues/%2F/$QUEUE/get)"
GET_BODY='{"count":10,"ackmode":"ack_requeue_false","encoding":"auto"}'
messages='[]'
got=0
for ((i = 0; i < 60; i++)); do
	batch="$(mgmt POST "/api/queues/%2F/$QUEUE/get" "$GET_BODY")" || die "management get failed"
	if command -v jq >/dev/null 2>&1; then
		messages="$(jq -c --argjson b "$batch" '. + $b' <<<"$messages")"
		got="$(jq length <<<"$messages")"
	else
		messages="$(python3 -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1]) + json.loads(sys.argv[2])))' "$messages" "$batch")"
		got="$(python3 -c 'import json,sys; print(len(json.loads(sys.argv[1])))' "$messages")"
	fi
	[ "$got" -ge 3 ] && break
	sleep 0.5
done
if command -v jq >/dev/null 2>&1; then
	jq -r '.[] | "message_id=\(.properties.message_id // "-")  content_type=\(.properties.content_type // "-")  payload=\(.payload)"' <<<"$messages"
else
	python3 -c '
import json, sys
for m in json.loads(sys.argv[1]):
    p = m.get("properties") or {}
    print("message_id=%s  content_type=%s  payload=%s" % (p.get("message_id", "-"), p.get("content_type", "-"), m.get("payload")))
' "$messages"
fi
if [ "$got" -lt 3 ]; then
	echo "only $got of 3 messages arrived within 30s; relay log tail:" >&2
	tail -n 30 "$RELAY_LOG" >&2
	exit 1
fi
echo "all 3 messages arrived"

step "Done"
cat <<EOF
  metrics:        http://$HTTP_ADDR/metrics   (health: /healthz, /readyz)
  management UI:  $MGMT/   (user $MGMT_USER / password $MGMT_PASS)
  relay log:      $RELAY_LOG   (pid $relay_pid, in $RELAY_PID_FILE)
  the relay keeps running; insert more rows with psql "\$RELAY_TEST_DATABASE_URL" (see .services/env)
  stop everything (relay, PostgreSQL, RabbitMQ): make down
EOF
