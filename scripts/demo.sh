#!/usr/bin/env bash
# End-to-end demo: start the services, run the relay, insert three outbox rows
# with plain SQL and watch them arrive in a RabbitMQ quorum queue. Then the
# consuming side: run the inbox example (bin/orders-consumer), insert three
# orders, watch them applied to orders_applied, publish one of them again and
# show that the copy is acked as a duplicate and applies nothing.
#
# Least privilege (docs/operations.md "Roles and grants"): the services' admin role
# `outbox` owns the tables (it migrates, grants, and creates the demo's
# application tables); the relay runs as demo_relay, the consumer as
# demo_consumer and the demo's inserts as demo_app, each with only the
# rights `relay migrate --…-role` grants (and the consumer SELECT, INSERT on
# its own table orders_applied).
#
# Expects bin/relay and bin/orders-consumer (make build). Run via `make demo`
# or scripts/demo.sh. Re-runnable: each run stops the previous demo relay and
# consumer and empties the demo's table orders_applied.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

STATE="$ROOT/.services"
RELAY_BIN="${RELAY_BIN:-$ROOT/bin/relay}"
RELAY_LOG="$STATE/demo-relay.log"
RELAY_PID_FILE="$STATE/demo-relay.pid"
CONSUMER_BIN="${CONSUMER_BIN:-$ROOT/bin/orders-consumer}"
CONSUMER_LOG="$STATE/demo-consumer.log"
CONSUMER_PID_FILE="$STATE/demo-consumer.pid"
# The example's defaults (examples/orders-consumer/main.go).
ORDERS_EXCHANGE=orders
ORDERS_QUEUE=orders-applier
ORDERS_KEY=order.created
HTTP_ADDR= # 127.0.0.1:9600 in slot 0; 9600+10*slot in another checkout's slot
PROM_ADDR= # 127.0.0.1:9690 in slot 0; 9690+10*slot in another's
PROM_DIR="$STATE/demo-prometheus"
PROM_PID_FILE="$STATE/demo-prometheus.pid"
QUEUE=demo.orders
MGMT_USER=outbox
MGMT_PASS=outbox-secret-pw
MGMT= # this checkout's management URL, from .services/env
APP_ROLE=demo_app
RELAY_ROLE=demo_relay
CONSUMER_ROLE=demo_consumer

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

# sql QUERY: run one statement against the demo database as the owner,
# print the result unaligned and without headers.
sql() { psql -X -q -A -t -v ON_ERROR_STOP=1 -c "$1" "$RELAY_TEST_DATABASE_URL"; }

# role_url ROLE: the demo database's URL, logging in as ROLE (its password
# is ROLE-pw; a local demo, on loopback).
role_url() { printf '%s' "$RELAY_TEST_DATABASE_URL" | sed -E "s#//[^@/]*@#//$1:$1-pw@#"; }

# ensure_role ROLE: create the login role if missing (no superuser, no
# CREATEDB, no CREATEROLE) and (re)set its password.
ensure_role() {
	if [ -z "$(sql "SELECT 1 FROM pg_roles WHERE rolname = '$1'")" ]; then
		sql "CREATE ROLE $1 LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE" >/dev/null
	fi
	sql "ALTER ROLE $1 LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$1-pw'" >/dev/null
}

# psql_shown: print the SQL script on stdin, indented, then run it with psql
# as the application's role.
psql_shown() {
	local script
	script="$(cat)"
	printf '%s\n\n' "$script" | sed 's/^/    /'
	printf '%s\n' "$script" | psql -X -v ON_ERROR_STOP=1 "$(role_url "$APP_ROLE")"
}

# consumer_log: what the consumer wrote since this run started it.
consumer_log() { tail -c +"$((consumer_log_start + 1))" "$CONSUMER_LOG"; }

consumer_failed() {
	echo "consumer log tail:" >&2
	consumer_log | tail -n 30 >&2
	die "$*; see $CONSUMER_LOG"
}

# wait_consumer_log REGEX WHAT: wait up to 30s for a line of this run's
# consumer log that matches REGEX and print it; fail if the consumer exits.
wait_consumer_log() {
	local re="$1" what="$2" i line
	printf 'waiting for %s ' "$what"
	for ((i = 0; i < 60; i++)); do
		line="$(consumer_log | grep -E -m 1 -- "$re" || true)"
		if [ -n "$line" ]; then
			printf '\n    %s\n' "$line"
			return 0
		fi
		if ! alive "$consumer_pid"; then
			echo
			rm -f "$CONSUMER_PID_FILE"
			consumer_failed "the consumer exited"
		fi
		printf '.'
		sleep 0.5
	done
	echo
	consumer_failed "timed out after 30s waiting for $what"
}

# start_prometheus: (re)start the demo's Prometheus, scraping the relay
# every 5 s with the shipped rules, and wait until it is ready (`make down`
# stops it).
start_prometheus() {
	scripts/install-prometheus.sh
	if [ -f "$PROM_PID_FILE" ] && alive "$(cat "$PROM_PID_FILE")"; then
		kill "$(cat "$PROM_PID_FILE")" 2>/dev/null || true
		for ((i = 0; i < 40; i++)); do alive "$(cat "$PROM_PID_FILE")" || break; sleep 0.25; done
	fi
	mkdir -p "$PROM_DIR"
	cat >"$PROM_DIR/prometheus.yml" <<PROM
global: {scrape_interval: 5s, evaluation_interval: 5s}
rule_files: ["$ROOT/deploy/prometheus/rules.yml"]
scrape_configs:
  - {job_name: outbox-relay, static_configs: [{targets: ["$HTTP_ADDR"]}]}
PROM
	setsid nohup prometheus --config.file="$PROM_DIR/prometheus.yml" --storage.tsdb.path="$PROM_DIR/data" \
		--web.listen-address="$PROM_ADDR" </dev/null >>"$PROM_DIR/prometheus.log" 2>&1 &
	echo $! >"$PROM_PID_FILE"
	for ((i = 0; i < 60; i++)); do
		curl -fs -o /dev/null --max-time 2 "http://$PROM_ADDR/-/ready" && return 0
		alive "$(cat "$PROM_PID_FILE")" || break
		sleep 0.5
	done
	tail -n 20 "$PROM_DIR/prometheus.log" >&2
	die "prometheus did not become ready; see $PROM_DIR/prometheus.log"
}

[ -x "$RELAY_BIN" ] || die "$RELAY_BIN not found: run 'make build' first"
[ -x "$CONSUMER_BIN" ] || die "$CONSUMER_BIN not found: run 'make build' first"
command -v jq >/dev/null 2>&1 || command -v python3 >/dev/null 2>&1 ||
	die "need jq or python3 to read the management API's JSON"

step "Starting PostgreSQL and RabbitMQ (scripts/services.sh up)"
scripts/services.sh up
# shellcheck disable=SC1091
. "$STATE/env"
# This checkout's slot (scripts/services.sh) sets the ports.
MGMT="$(printf '%s' "$RELAY_TEST_MANAGEMENT_URL" | sed -E 's#//[^@/]*@#//#; s#/$##')"
SLOT="$(cat "$STATE/slot" 2>/dev/null || echo 0)"
HTTP_ADDR="127.0.0.1:$((9600 + 10 * SLOT))"
PROM_ADDR="127.0.0.1:$((9690 + 10 * SLOT))"

export RELAY_DATABASE_URL="$RELAY_TEST_DATABASE_URL"
export RELAY_AMQP_URL="$RELAY_TEST_AMQP_URL"
export RELAY_HTTP_ADDR="$HTTP_ADDR"
export PGCLIENTENCODING=UTF8

step "Creating the least-privilege login roles $APP_ROLE, $RELAY_ROLE, $CONSUMER_ROLE (password: the name + '-pw')"
for role in "$APP_ROLE" "$RELAY_ROLE" "$CONSUMER_ROLE"; do ensure_role "$role"; done

step "Applying migrations and grants as the owner: bin/relay migrate --app-role $APP_ROLE --relay-role $RELAY_ROLE --consumer-role $CONSUMER_ROLE"
"$RELAY_BIN" migrate --app-role "$APP_ROLE" --relay-role "$RELAY_ROLE" --consumer-role "$CONSUMER_ROLE"

step "Creating the application's tables as the owner: 'orders' (the README's samples write to it), 'orders_applied' (the consumer's)"
echo "CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, total_cents bigint NOT NULL); GRANT INSERT ON orders TO $APP_ROLE"
sql 'CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, total_cents bigint NOT NULL)' >/dev/null
sql "GRANT INSERT ON orders TO $APP_ROLE" >/dev/null
echo "bin/orders-consumer -setup; GRANT SELECT, INSERT ON orders_applied TO $CONSUMER_ROLE"
"$CONSUMER_BIN" -setup -database-url "$RELAY_TEST_DATABASE_URL"
sql "GRANT SELECT, INSERT ON orders_applied TO $CONSUMER_ROLE" >/dev/null

step "Declaring durable quorum queue '$QUEUE' (management API)"
echo "PUT $MGMT/api/queues/%2F/$QUEUE {\"durable\":true,\"arguments\":{\"x-queue-type\":\"quorum\"}}"
mgmt PUT "/api/queues/%2F/$QUEUE" '{"durable":true,"arguments":{"x-queue-type":"quorum"}}' >/dev/null ||
	die "could not declare $QUEUE (if it exists with other arguments, delete it in the management UI)"
# Leftovers from an earlier demo run would confuse the count below.
mgmt DELETE "/api/queues/%2F/$QUEUE/contents" >/dev/null || true

step "Starting the relay in the background as $RELAY_ROLE (log: $RELAY_LOG)"
scripts/services.sh demo-stop # an earlier run's consumer and relay
if curl -fs -o /dev/null --max-time 2 "http://$HTTP_ADDR/readyz" 2>/dev/null ||
	(exec 3<>"/dev/tcp/${HTTP_ADDR%:*}/${HTTP_ADDR##*:}") 2>/dev/null; then
	die "something else is already listening on $HTTP_ADDR (another relay?); stop it first"
fi
mkdir -p "$STATE"
printf '\n---- demo relay started %s\n' "$(date -u +%FT%TZ)" >>"$RELAY_LOG"
RELAY_DATABASE_URL="$(role_url "$RELAY_ROLE")" setsid nohup "$RELAY_BIN" run </dev/null >>"$RELAY_LOG" 2>&1 &
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

step "Starting Prometheus (Debian's prometheus, rules from deploy/prometheus/rules.yml) on http://$PROM_ADDR/"
start_prometheus

step "Inserting 3 outbox rows in ONE transaction (plain SQL via psql, as $APP_ROLE)"
psql_shown <<'EOF'
BEGIN;
INSERT INTO outbox (exchange, routing_key, payload) VALUES
  ('', 'demo.orders', convert_to('{"order":1,"note":"café \\ backslash"}', 'UTF8')),
  ('', 'demo.orders', convert_to('{"order":2,"note":"naïve \"quotes\""}', 'UTF8')),
  ('', 'demo.orders', convert_to('{"order":3,"note":"€ 42 ✓"}', 'UTF8'))
RETURNING id, message_id;
COMMIT;
EOF

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

# ------------------------------------------------------------------------
# Part 2: the consuming side, through the inbox.

step "Starting the orders consumer (bin/orders-consumer) in the background as $CONSUMER_ROLE (log: $CONSUMER_LOG)"
# Orders an earlier run left unconsumed would be applied on top of this run's.
if mgmt GET "/api/queues/%2F/$ORDERS_QUEUE" >/dev/null 2>&1; then
	mgmt DELETE "/api/queues/%2F/$ORDERS_QUEUE/contents" >/dev/null || die "could not purge $ORDERS_QUEUE"
fi
consumer_log_start="$(stat -c %s "$CONSUMER_LOG" 2>/dev/null || echo 0)"
printf '\n---- demo consumer started %s\n' "$(date -u +%FT%TZ)" >>"$CONSUMER_LOG"
# Debug level: the inbox logs each duplicate it acks at debug.
ORDERS_DATABASE_URL="$(role_url "$CONSUMER_ROLE")" ORDERS_AMQP_URL="$RELAY_TEST_AMQP_URL" ORDERS_LOG_LEVEL=debug \
	setsid nohup "$CONSUMER_BIN" </dev/null >>"$CONSUMER_LOG" 2>&1 &
consumer_pid=$!
echo "$consumer_pid" >"$CONSUMER_PID_FILE"
echo "consumer pid $consumer_pid"
# The exchange must exist and the queue be bound before the orders are
# published: the relay publishes with mandatory set, so an unroutable order
# would be retried and finally parked as dead.
wait_consumer_log 'msg="topology declared"' "exchange '$ORDERS_EXCHANGE', quorum queue '$ORDERS_QUEUE', binding '$ORDERS_KEY'"
wait_consumer_log 'msg=consuming' "the consumer to subscribe"

step "Emptying the demo table orders_applied, so that orders 1001-1003 apply again on every run"
echo "TRUNCATE orders_applied"
sql 'TRUNCATE orders_applied' >/dev/null

step "Inserting 3 orders into the outbox in ONE transaction (plain SQL via psql, as $APP_ROLE)"
psql_shown <<'EOF'
BEGIN;
INSERT INTO outbox (exchange, routing_key, payload) VALUES
  ('orders', 'order.created', convert_to('{"order_id":1001,"total_cents":1999}', 'UTF8')),
  ('orders', 'order.created', convert_to('{"order_id":1002,"total_cents":4550}', 'UTF8')),
  ('orders', 'order.created', convert_to('{"order_id":1003,"total_cents":12000}', 'UTF8'))
RETURNING id, message_id;
COMMIT;
EOF

step "Waiting for the consumer to apply them to orders_applied"
applied=0
for ((i = 0; i < 60; i++)); do
	applied="$(sql 'SELECT count(*) FROM orders_applied')"
	[ "$applied" -ge 3 ] && break
	if ! alive "$consumer_pid"; then
		rm -f "$CONSUMER_PID_FILE"
		consumer_failed "the consumer exited"
	fi
	sleep 0.5
done
consumer_log | grep -F 'msg="order applied"' | sed 's/^/    /' || true
if [ "$applied" -lt 3 ]; then
	echo "relay log tail:" >&2
	tail -n 20 "$RELAY_LOG" >&2
	consumer_failed "only $applied of 3 orders applied within 30s"
fi
echo "all 3 orders applied"

# Order 1001 was applied under the first outbox row's message_id: the relay
# sends a row's message_id as the AMQP message-id.
first_id="$(sql "SELECT a.message_id FROM orders_applied a JOIN outbox o ON o.message_id::text = a.message_id WHERE a.order_id = 1001")"
[[ "$first_id" =~ ^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$ ]] ||
	die "no outbox message_id found for order 1001 (got '$first_id')"

step "Publishing order 1001 again with the same message_id (management API, POST /api/exchanges/%2F/$ORDERS_EXCHANGE/publish)"
# A redelivery or a relay republishing after a crash looks exactly like this.
PUBLISH_BODY="$(printf '{"routing_key":"%s","payload":"%s","payload_encoding":"string","properties":{"message_id":"%s","content_type":"application/json","delivery_mode":2}}' \
	"$ORDERS_KEY" '{\"order_id\":1001,\"total_cents\":1999}' "$first_id")"
echo "POST $MGMT/api/exchanges/%2F/$ORDERS_EXCHANGE/publish $PUBLISH_BODY"
routed="$(mgmt POST "/api/exchanges/%2F/$ORDERS_EXCHANGE/publish" "$PUBLISH_BODY")" || die "management publish failed"
echo "-> $routed"
[[ "$routed" == *'"routed":true'* ]] || die "the copy was not routed to $ORDERS_QUEUE"
wait_consumer_log "msg=\"duplicate message acked\" .*message_id=$first_id( |\$)" "the inbox to recognise the copy as a duplicate"

applied="$(sql 'SELECT count(*) FROM orders_applied')"
[ "$applied" = 3 ] || die "orders_applied has $applied rows, want 3"
echo "orders_applied still has exactly 3 rows: the copy was acked without calling the handler"
psql -X -v ON_ERROR_STOP=1 "$RELAY_TEST_DATABASE_URL" \
	-c 'SELECT order_id, total_cents, message_id, applied_at FROM orders_applied ORDER BY order_id'

step "Done"
cat <<EOF
  metrics:        http://$HTTP_ADDR/metrics   (health: /healthz, /readyz)
  management UI:  $MGMT/   (user $MGMT_USER / password $MGMT_PASS)
  prometheus:     http://$PROM_ADDR/   (alerts: http://$PROM_ADDR/alerts; make down stops it)
  relay log:      $RELAY_LOG   (pid $relay_pid, in $RELAY_PID_FILE)
  consumer log:   $CONSUMER_LOG   (pid $consumer_pid, in $CONSUMER_PID_FILE)
  the relay and the consumer keep running; insert more rows with psql "\$RELAY_TEST_DATABASE_URL" (see .services/env),
    orders go to exchange '$ORDERS_EXCHANGE' with routing key '$ORDERS_KEY' and a payload like {"order_id":1004,"total_cents":500}
  stop everything (relay, consumer, PostgreSQL, RabbitMQ): make down
EOF
