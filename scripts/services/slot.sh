# shellcheck shell=bash
# Sourced by scripts/services.sh: the checkout's slot, its ports and node names.

# Each checkout runs its own services in a slot (0-9) of its own: ports and
# RabbitMQ node names derive from it, so two checkouts on one machine never
# share, stop or restart each other's services. `up` claims the lowest free
# slot (a machine-wide claim file names the checkout) and records it in
# .services/slot; the other commands act only on the recorded slot.
# OUTBOXRELAY_SLOT forces one. Slot 0 has the historical ports below.
SLOT_DIR=/var/tmp/outboxrelay-slots
SLOTS=10

slot_owner() { cat "$SLOT_DIR/$1" 2>/dev/null || true; }

# claim_slot: the recorded slot, or the lowest slot no live checkout claims
# and whose ports are free.
claim_slot() {
	if [ -s "$STATE/slot" ]; then
		cat "$STATE/slot"
		return
	fi
	mkdir -p "$SLOT_DIR" "$STATE"
	local legacy=
	# A checkout whose services were started before slots existed ran on
	# slot 0's ports: keep them.
	[ ! -e "$STATE/env" ] || legacy=1
	local s owner
	(
		flock -w 60 8 || die "timed out waiting for $SLOT_DIR/lock"
		for ((s = 0; s < SLOTS; s++)); do
			owner="$(slot_owner "$s")"
			if [ -n "$owner" ] && [ "$owner" != "$ROOT" ] && [ -d "$owner/.services" ]; then
				continue # another live checkout's
			fi
			set_slot_vars "$s"
			if [ "$owner" != "$ROOT" ] && [ -z "$legacy" ] && { port_open "$PG_PORT" || port_open "$AMQP_PORT"; }; then
				continue # someone else's services listen there
			fi
			printf '%s\n' "$ROOT" >"$SLOT_DIR/$s"
			echo "$s" >"$STATE/slot"
			echo "$s"
			exit 0
		done
		die "no free service slot (0-$((SLOTS - 1))): see $SLOT_DIR"
	) 8>"$SLOT_DIR/lock"
}

port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

# set_slot_vars S: the ports and node names of slot S (stride 10 leaves room
# for the fault suite's three cluster nodes at +1..+3; the TLS listener is
# at +5).
set_slot_vars() {
	local s="$1"
	SLOT="$s"
	PG_PORT=$((55432 + 10 * s))
	AMQP_PORT=$((56720 + 10 * s))
	AMQPS_PORT=$((AMQP_PORT + 5))
	MGMT_PORT=$((15680 + 10 * s))
	RMQ_DIST_PORT=$((25680 + 10 * s))
	RMQ_CTL_DIST_MIN=$((45680 + 80 * s))
	RMQ_CTL_DIST_MAX=$((RMQ_CTL_DIST_MIN + 19))
	if [ "$s" = 0 ]; then NODE_PREFIX=outbox; else NODE_PREFIX="outbox-s$s-"; fi
	RMQ_NODE="${NODE_PREFIX}@localhost" # outbox@localhost in slot 0
	DATABASE_URL="postgres://$SVC_USER:$SVC_PASS@127.0.0.1:$PG_PORT/$SVC_DB?sslmode=disable"
	AMQP_URL="amqp://$SVC_USER:$SVC_PASS@127.0.0.1:$AMQP_PORT/"
	MANAGEMENT_URL="http://$SVC_USER:$SVC_PASS@127.0.0.1:$MGMT_PORT/"
	# The same services over TLS, verifying the server against the test CA
	# (scripts/services/tls.sh); RabbitMQ also wants the client certificate.
	DATABASE_TLS_URL="postgres://$SVC_USER:$SVC_PASS@127.0.0.1:$PG_PORT/$SVC_DB?sslmode=verify-full&sslrootcert=$TLS_DIR/ca.pem"
	AMQPS_URL="amqps://$SVC_USER:$SVC_PASS@127.0.0.1:$AMQPS_PORT/?cacertfile=$TLS_DIR/ca.pem&certfile=$TLS_DIR/client.pem&keyfile=$TLS_DIR/client.key"
}

SVC_USER=outbox
SVC_PASS=outbox-secret-pw
SVC_DB=outbox
START_TIMEOUT=120
