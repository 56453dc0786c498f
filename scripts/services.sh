#!/usr/bin/env bash
# Local test services for outboxrelay: PostgreSQL + RabbitMQ (with management).
#
# Usage: scripts/services.sh up|down|status|env|rabbit-stop|rabbit-start|pg-restart|clean
#        scripts/services.sh cluster-up|cluster-down|cluster-clean
#        scripts/services.sh node-stop N|node-start N|rabbitmqctl N ARGS...
#
#   up            start both services (idempotent, safe to run concurrently) and
#                 print the RELAY_TEST_* variables on stdout
#   env           print the RELAY_TEST_* variables only (starts nothing)
#   down          stop both services, the demo relay and consumer and the
#                 cluster, if any; data is kept
#   status        say what is running
#   rabbit-stop   stop only the RabbitMQ node (fault tests)
#   rabbit-start  start only the RabbitMQ node and wait until it is ready
#   pg-restart    restart only PostgreSQL (fast shutdown) and wait until ready
#   clean         down + delete all service state (data directories)
#
# Fault-test cluster (local mode only; exit 2 in docker mode):
#   cluster-up    start a three-node RabbitMQ cluster outbox1..3@localhost
#                 (AMQP 56721-56723, management 15681-15683, distribution
#                 25681-25683), separate from the single node; join nodes 2 and
#                 3 to node 1; wait until cluster_status shows 3 running nodes;
#                 print RELAY_TEST_CLUSTER_AMQP_URLS. Fast when already up.
#   cluster-down  stop the three nodes (data kept; node 1 stops last)
#   cluster-clean cluster-down + delete the cluster's data
#   node-stop N   stop node N (1..3, or 0/single for the single node) and wait
#                 until its process is gone and its ports are closed
#   node-start N  start node N and wait until it runs and (for 1..3) shows as
#                 running in another member's cluster_status
#   rabbitmqctl N ARGS...  run rabbitmqctl ARGS against node N (0/single, 1..3)
#
# If `docker info` works, the services from docker-compose.yml are used.
# Otherwise PostgreSQL and RabbitMQ run as local processes (as the postgres and
# rabbitmq users) with their state under $ROOT/.services/. Set
# OUTBOXRELAY_SERVICES=local|docker to force a mode.
#
# Everything listens on 127.0.0.1 only. Slot 0 (the first checkout; see
# "slot" below, slot S adds 10*S to each port and 80*S to the CLI range):
#   PostgreSQL 55432, AMQP 56720, management HTTP 15680,
#   Erlang distribution 25680 (CLI tools 45680-45699), epmd 4369 (shared);
#   cluster nodes N=1..3: AMQP 5672N, management 1568N, distribution 2568N
#   (CLI tools 45700-45759). Node names: outbox@localhost, outboxN@localhost;
#   in slot S: outbox-sS-@localhost, outbox-sS-N@localhost.
# Progress goes to stderr; only the RELAY_TEST_* lines go to stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
STATE="$ROOT/.services"
ENV_FILE="$STATE/env"
LOCK_FILE="$STATE/lock"
MODE_FILE="$STATE/mode"
DEMO_PID_FILE="$STATE/demo-relay.pid"
DEMO_CONSUMER_PID_FILE="$STATE/demo-consumer.pid"

# ---------------------------------------------------------------- slot
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
# for the fault suite's three cluster nodes at +1..+3).
set_slot_vars() {
	local s="$1"
	SLOT="$s"
	PG_PORT=$((55432 + 10 * s))
	AMQP_PORT=$((56720 + 10 * s))
	MGMT_PORT=$((15680 + 10 * s))
	RMQ_DIST_PORT=$((25680 + 10 * s))
	RMQ_CTL_DIST_MIN=$((45680 + 80 * s))
	RMQ_CTL_DIST_MAX=$((RMQ_CTL_DIST_MIN + 19))
	if [ "$s" = 0 ]; then NODE_PREFIX=outbox; else NODE_PREFIX="outbox-s$s-"; fi
	RMQ_NODE="${NODE_PREFIX}@localhost"
	[ "$s" != 0 ] || RMQ_NODE=outbox@localhost
	DATABASE_URL="postgres://$SVC_USER:$SVC_PASS@127.0.0.1:$PG_PORT/$SVC_DB?sslmode=disable"
	AMQP_URL="amqp://$SVC_USER:$SVC_PASS@127.0.0.1:$AMQP_PORT/"
	MANAGEMENT_URL="http://$SVC_USER:$SVC_PASS@127.0.0.1:$MGMT_PORT/"
}
SVC_USER=outbox
SVC_PASS=outbox-secret-pw
SVC_DB=outbox



START_TIMEOUT=120

# kill -0 is not enough: zombies (e.g. when PID 1 does not reap) still "exist".
alive() {
	local st
	st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
	[ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

log() { printf 'services: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ -n "${OUTBOXRELAY_SLOT:-}" ]; then
	[[ "$OUTBOXRELAY_SLOT" =~ ^[0-9]$ ]] || die "OUTBOXRELAY_SLOT must be 0-9"
	set_slot_vars "$OUTBOXRELAY_SLOT"
elif [ -s "$STATE/slot" ]; then
	set_slot_vars "$(cat "$STATE/slot")"
elif [ "${1:-}" = up ] || [ "${1:-}" = cluster-up ]; then
	slot="$(claim_slot)" || exit 1
	set_slot_vars "$slot"
else
	case "${1:-}" in
	down | clean | demo-stop)
		log "no services were started from this checkout (no $STATE/slot): nothing to stop"
		exit 0
		;;
	status)
		echo "no services were started from this checkout (run make up)"
		exit 0
		;;
	"" | help | -h | --help) set_slot_vars 0 ;; # the usage message below
	*) die "no services were started from this checkout (no $STATE/slot): run \`make up\` first" ;;
	esac
fi

print_env() {
	printf 'RELAY_TEST_DATABASE_URL=%s\n' "$DATABASE_URL"
	printf 'RELAY_TEST_AMQP_URL=%s\n' "$AMQP_URL"
	printf 'RELAY_TEST_MANAGEMENT_URL=%s\n' "$MANAGEMENT_URL"
}

write_env_file() {
	local tmp="$ENV_FILE.tmp.$$"
	{
		echo "# generated by scripts/services.sh"
		printf "export RELAY_TEST_DATABASE_URL='%s'\n" "$DATABASE_URL"
		printf "export RELAY_TEST_AMQP_URL='%s'\n" "$AMQP_URL"
		printf "export RELAY_TEST_MANAGEMENT_URL='%s'\n" "$MANAGEMENT_URL"
	} >"$tmp"
	mv -f "$tmp" "$ENV_FILE"
}

# Serialise every state-changing command. fd 9 must never leak into daemons
# (they would hold the lock forever), so all daemon launches use 9>&-.
take_lock() {
	mkdir -p "$STATE"
	exec 9>"$LOCK_FILE"
	if ! flock -w 900 9; then
		die "timed out waiting for $LOCK_FILE"
	fi
}

# Run a command as another user, from a directory that user can read.
as_user() {
	local user="$1"
	shift
	if [ "$(id -un)" = "$user" ]; then
		(cd / && "$@")
	elif [ "$(id -u)" = 0 ]; then
		(cd / && runuser -u "$user" -- "$@")
	elif command -v sudo >/dev/null 2>&1; then
		(cd / && sudo -n -u "$user" -- "$@")
	else
		die "need root (or sudo) to run commands as $user"
	fi
}

# ---------------------------------------------------------------- mode

docker_works() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

compose() {
	if docker compose version >/dev/null 2>&1; then
		docker compose -f "$ROOT/docker-compose.yml" "$@"
	elif command -v docker-compose >/dev/null 2>&1; then
		docker-compose -f "$ROOT/docker-compose.yml" "$@"
	else
		die "docker engine found but neither 'docker compose' nor 'docker-compose' is available"
	fi
}

# Mode for `up`: forced, or docker if an engine answers, else local.
pick_mode() {
	case "${OUTBOXRELAY_SERVICES:-auto}" in
	local | docker) echo "$OUTBOXRELAY_SERVICES" ;;
	auto) if docker_works; then echo docker; else echo local; fi ;;
	*) die "OUTBOXRELAY_SERVICES must be auto, local or docker" ;;
	esac
}

# Mode for the other commands: what `up` used last time, else pick_mode.
current_mode() {
	if [ -n "${OUTBOXRELAY_SERVICES:-}" ] && [ "$OUTBOXRELAY_SERVICES" != auto ]; then
		echo "$OUTBOXRELAY_SERVICES"
	elif [ -s "$MODE_FILE" ]; then
		cat "$MODE_FILE"
	else
		pick_mode
	fi
}

# ---------------------------------------------------------------- packages

APT_UPDATED=
apt_install() {
	# Tests only start what is installed (internal/testenv sets this).
	[ -z "${SERVICES_NO_INSTALL:-}" ] || die "missing packages ($*): tests do not install system packages; run \`make up\` or \`make test\` first"
	[ "$(id -u)" = 0 ] || die "missing packages ($*) and not root; install them first"
	command -v apt-get >/dev/null 2>&1 || die "missing packages ($*) and no apt-get"
	# Keep the packages' own system services from starting on install (they
	# would grab 5432/5672 and epmd); only for the duration of the install.
	local policy=/usr/sbin/policy-rc.d made_policy=
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
	fi
	local rc=0
	{
		if [ -z "$APT_UPDATED" ]; then
			log "apt-get update"
			apt-get update >&2 && APT_UPDATED=1
		fi
		log "apt-get install $*"
		DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2
	} || rc=$?
	[ -z "$made_policy" ] || rm -f "$policy"
	[ "$rc" = 0 ] || die "apt-get install $* failed"
}

find_pg_bin() {
	local d best=
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
		if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then best="$d"; fi
	done
	echo "$best"
}

find_rmq_bin() {
	if [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
		echo /usr/lib/rabbitmq/bin
	elif command -v rabbitmq-server >/dev/null 2>&1; then
		dirname "$(readlink -f "$(command -v rabbitmq-server)")"
	fi
}

PG_BIN=
RMQ_BIN=
ensure_packages() {
	local want=()
	PG_BIN="$(find_pg_bin)"
	RMQ_BIN="$(find_rmq_bin)"
	[ -n "$PG_BIN" ] && command -v psql >/dev/null 2>&1 || want+=(postgresql)
	[ -n "$RMQ_BIN" ] || want+=(rabbitmq-server)
	command -v curl >/dev/null 2>&1 || want+=(curl)
	# The pooler tests run their own pgbouncer processes.
	command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || want+=(pgbouncer)
	if [ "${#want[@]}" -gt 0 ]; then
		apt_install "${want[@]}"
		PG_BIN="$(find_pg_bin)"
		RMQ_BIN="$(find_rmq_bin)"
	fi
	[ -n "$PG_BIN" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
	[ -n "$RMQ_BIN" ] || die "no rabbitmq-server found"
	id postgres >/dev/null 2>&1 || die "no postgres user"
	id rabbitmq >/dev/null 2>&1 || die "no rabbitmq user"
}

# ---------------------------------------------------------------- state dirs

# The data must be reachable by the postgres and rabbitmq users. If the
# checkout is somewhere they cannot traverse (e.g. under /root, mode 700), or
# the path is too long for a unix socket, keep the data under
# /var/tmp/outboxrelay-<hash of ROOT>/ and symlink it into .services/.
PG_DIR=
RMQ_DIR=
resolve_dirs() {
	local create="${1:-}"
	if [ -n "$create" ]; then
		mkdir -p "$STATE"
		chmod 755 "$STATE"
		if [ ! -e "$STATE/pg" ] && [ ! -L "$STATE/pg" ]; then
			local base="$STATE"
			if ! as_user postgres test -x "$STATE" || ! as_user rabbitmq test -x "$STATE" ||
				[ "${#STATE}" -gt 70 ]; then
				base="/var/tmp/outboxrelay-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
				log "postgres/rabbitmq cannot use $STATE directly; keeping data in $base"
				mkdir -p "$base"
				chmod 755 "$base"
				printf '%s\n' "$ROOT" >"$base/ROOT"
				mkdir -p "$base/pg" "$base/rabbitmq"
				ln -sfn "$base/pg" "$STATE/pg"
				ln -sfn "$base/rabbitmq" "$STATE/rabbitmq"
			fi
		fi
		if [ -L "$STATE/pg" ] && [ ! -L "$STATE/rabbitmq" ] && [ ! -e "$STATE/rabbitmq" ]; then
			ln -sfn "$(dirname "$(readlink -f "$STATE/pg")")/rabbitmq" "$STATE/rabbitmq"
		fi
		local d
		for d in pg rabbitmq; do # also recreates the targets of dangling symlinks
			if [ -L "$STATE/$d" ]; then mkdir -p "$(readlink -m "$STATE/$d")"; else mkdir -p "$STATE/$d"; fi
		done
	fi
	PG_DIR="$(readlink -f "$STATE/pg" 2>/dev/null || echo "$STATE/pg")"
	RMQ_DIR="$(readlink -f "$STATE/rabbitmq" 2>/dev/null || echo "$STATE/rabbitmq")"
	if [ -n "$create" ]; then
		mkdir -p "$PG_DIR/run" "$RMQ_DIR/mnesia" "$RMQ_DIR/log"
		chown -R postgres:postgres "$PG_DIR"
		chmod 700 "$PG_DIR"
		chown -R rabbitmq:rabbitmq "$RMQ_DIR"
		chmod 750 "$RMQ_DIR"
	fi
}

# ---------------------------------------------------------------- postgres

pg_ready() {
	if command -v pg_isready >/dev/null 2>&1; then
		pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2
	else
		(exec 3<>/dev/tcp/127.0.0.1/"$PG_PORT") 2>/dev/null
	fi
}

pg_local_running() {
	[ -n "$PG_BIN" ] && [ -f "$PG_DIR/data/PG_VERSION" ] &&
		as_user postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1
}

pg_write_conf() {
	local conf="$PG_DIR/data/outboxrelay.conf"
	cat >"$conf" <<EOF
# Managed by scripts/services.sh; rewritten on every start.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR/run'
max_connections = 300
shared_buffers = 256MB
# Durability is what the tests check: keep these on.
fsync = on
synchronous_commit = on
full_page_writes = on
log_destination = 'stderr'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
timezone = 'UTC'
EOF
	chown postgres:postgres "$conf"
	grep -q "^include_if_exists = 'outboxrelay.conf'" "$PG_DIR/data/postgresql.conf" ||
		echo "include_if_exists = 'outboxrelay.conf'" >>"$PG_DIR/data/postgresql.conf"
}

pg_init() {
	[ -f "$PG_DIR/data/PG_VERSION" ] && return 0
	log "initdb $PG_DIR/data ($PG_BIN)"
	rm -rf "$PG_DIR/data"
	as_user postgres "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --encoding=UTF8 --locale=C \
		--auth-local=trust --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1 ||
		{ cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
}

pg_start_local() {
	pg_init
	pg_write_conf
	if pg_local_running; then
		log "postgres: server process exists, waiting for it"
	else
		log "starting postgres on 127.0.0.1:$PG_PORT (log: $STATE/pg/log)"
		if ! as_user postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -t "$START_TIMEOUT" \
			start </dev/null >&2 9>&-; then
			tail -n 40 "$PG_DIR/log" >&2 || true
			die "postgres did not start"
		fi
	fi
	local i
	for ((i = 0; i < START_TIMEOUT; i++)); do
		pg_ready && break
		sleep 1
	done
	pg_ready || { tail -n 40 "$PG_DIR/log" >&2 || true; die "postgres not ready after ${START_TIMEOUT}s"; }
	pg_provision
}

pg_provision() {
	as_user postgres psql -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR/run" -p "$PG_PORT" -U postgres -d postgres >&2 <<EOF
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$SVC_USER') THEN
    CREATE ROLE $SVC_USER LOGIN SUPERUSER PASSWORD '$SVC_PASS';
  ELSE
    ALTER ROLE $SVC_USER LOGIN SUPERUSER PASSWORD '$SVC_PASS';
  END IF;
END \$\$;
SELECT 'CREATE DATABASE $SVC_DB OWNER $SVC_USER ENCODING ''UTF8'' TEMPLATE template0'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$SVC_DB') \gexec
EOF
}

pg_stop_local() {
	if pg_local_running; then
		log "stopping postgres"
		as_user postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 60 stop >&2 9>&-
	fi
}

# ---------------------------------------------------------------- rabbitmq

rmq_env() {
	RMQ_ENV=(
		HOME=/var/lib/rabbitmq
		LANG=C.UTF-8
		LC_ALL=C.UTF-8
		RABBITMQ_NODENAME="$RMQ_NODE"
		RABBITMQ_USE_LONGNAME=false
		RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
		RABBITMQ_NODE_PORT="$AMQP_PORT"
		RABBITMQ_DIST_PORT="$RMQ_DIST_PORT"
		RABBITMQ_CTL_DIST_PORT_MIN="$RMQ_CTL_DIST_MIN"
		RABBITMQ_CTL_DIST_PORT_MAX="$RMQ_CTL_DIST_MAX"
		RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia"
		RABBITMQ_LOG_BASE="$RMQ_DIR/log"
		RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_DIR/enabled_plugins"
		RABBITMQ_CONFIG_FILE="$RMQ_DIR/rabbitmq.conf"
		RABBITMQ_ADVANCED_CONFIG_FILE="$RMQ_DIR/advanced.config"
		RABBITMQ_CONF_ENV_FILE="$RMQ_DIR/rabbitmq-env.conf"
		RABBITMQ_PID_FILE="$RMQ_DIR/rabbitmq.pid"
		RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
		RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
		ERL_EPMD_ADDRESS=127.0.0.1
	)
}

rmq() { # rmq <tool> args...: run a RabbitMQ CLI tool against our node
	local tool="$1"
	shift
	rmq_env
	as_user rabbitmq env "${RMQ_ENV[@]}" "$RMQ_BIN/$tool" "$@"
}

mgmt_ok() {
	curl -fsS -o /dev/null --max-time 3 -u "$SVC_USER:$SVC_PASS" "http://127.0.0.1:$MGMT_PORT/api/overview" 2>/dev/null
}

rmq_ping() { [ -n "$RMQ_BIN" ] && rmq rabbitmq-diagnostics -q ping --timeout 5 >/dev/null 2>&1; }

rmq_write_conf() {
	cat >"$RMQ_DIR/rabbitmq.conf" <<EOF
# Managed by scripts/services.sh; rewritten on every start.
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $MGMT_PORT
# Only applied when the node boots with an empty database:
default_vhost = /
default_user = $SVC_USER
default_pass = $SVC_PASS
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
log.console = false
log.file.level = info
EOF
	echo '[rabbitmq_management].' >"$RMQ_DIR/enabled_plugins"
	echo '[].' >"$RMQ_DIR/advanced.config"
	echo '# intentionally empty: all settings come from scripts/services.sh' >"$RMQ_DIR/rabbitmq-env.conf"
	chown rabbitmq:rabbitmq "$RMQ_DIR/rabbitmq.conf" "$RMQ_DIR/enabled_plugins" \
		"$RMQ_DIR/advanced.config" "$RMQ_DIR/rabbitmq-env.conf"
}

rmq_log_tail() {
	log "---- tail of $RMQ_DIR/server.out"
	tail -n 30 "$RMQ_DIR/server.out" >&2 2>/dev/null || true
	log "---- tail of $RMQ_DIR/log/$RMQ_NODE.log"
	tail -n 60 "$RMQ_DIR/log/$RMQ_NODE.log" >&2 2>/dev/null || true
}

rmq_start_local() {
	if mgmt_ok; then
		log "rabbitmq already answering on 127.0.0.1:$MGMT_PORT"
		return 0
	fi
	rmq_write_conf
	local pid= deadline=$((SECONDS + START_TIMEOUT))
	while :; do
		if [ -z "$pid" ] && ! rmq_ping; then
			log "starting rabbitmq node $RMQ_NODE on 127.0.0.1:$AMQP_PORT (log: $STATE/rabbitmq/log/)"
			rmq_env
			(
				cd /
				exec setsid runuser -u rabbitmq -- env "${RMQ_ENV[@]}" "$RMQ_BIN/rabbitmq-server"
			) </dev/null >>"$RMQ_DIR/server.out" 2>&1 9>&- &
			pid=$!
			disown "$pid" 2>/dev/null || true
		elif rmq rabbitmq-diagnostics -q check_running --timeout 5 >/dev/null 2>&1; then
			break
		fi
		if [ -n "$pid" ] && ! alive "$pid"; then
			rmq_log_tail
			die "rabbitmq-server exited during startup"
		fi
		[ "$SECONDS" -lt "$deadline" ] || { rmq_log_tail; die "rabbitmq not running after ${START_TIMEOUT}s"; }
		sleep 1
	done
	while ! curl -fsS -o /dev/null --max-time 3 "http://127.0.0.1:$MGMT_PORT/api/overview" 2>/dev/null &&
		! curl -s -o /dev/null --max-time 3 -w '%{http_code}' "http://127.0.0.1:$MGMT_PORT/" 2>/dev/null | grep -q '^[23]'; do
		[ "$SECONDS" -lt "$deadline" ] || { rmq_log_tail; die "management API not answering after ${START_TIMEOUT}s"; }
		sleep 1
	done
	if ! mgmt_ok; then
		# Database existed before with different users: create ours explicitly.
		log "creating rabbitmq user $SVC_USER"
		rmq rabbitmqctl -q add_user "$SVC_USER" "$SVC_PASS" >&2 2>/dev/null ||
			rmq rabbitmqctl -q change_password "$SVC_USER" "$SVC_PASS" >&2
		rmq rabbitmqctl -q set_user_tags "$SVC_USER" administrator >&2
		rmq rabbitmqctl -q set_permissions -p / "$SVC_USER" '.*' '.*' '.*' >&2
		mgmt_ok || { rmq_log_tail; die "management API rejects $SVC_USER"; }
	fi
	log "rabbitmq ready"
}

rmq_stop_local() {
	if [ -n "$RMQ_BIN" ] && { mgmt_ok || rmq_ping; }; then
		log "stopping rabbitmq node $RMQ_NODE"
		rmq rabbitmqctl -q shutdown --timeout 60 >&2 9>&- || rmq rabbitmqctl -q stop >&2 9>&- || true
	fi
	local i
	for ((i = 0; i < 60; i++)); do
		(exec 3<>/dev/tcp/127.0.0.1/"$AMQP_PORT") 2>/dev/null || return 0
		sleep 1
	done
	log "warning: something still listens on 127.0.0.1:$AMQP_PORT"
}

# ---------------------------------------------------------------- rabbitmq cluster

# A three-node cluster for fault tests (local mode only), separate from the
# single node. Node N (1..3) is outboxN@localhost with the single node's ports
# plus N: AMQP 5672N, management 1568N, distribution 2568N; its CLI tools use
# 45700+20*(N-1) .. +19. Node "0" is the single node (outbox@localhost).
# State: $STATE/rabbitmq-cluster/nodeN/ (a symlink beside pg/ and rabbitmq/
# when those live under /var/tmp). All nodes share the rabbitmq user's cookie.
CLUSTER_NODES=(1 2 3)
CLUSTER_DIR=
CLUSTER_START_TIMEOUT=180
# One scheduler thread per node keeps three extra VMs cheap on a small box.
CLUSTER_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} +S 1:1"

node_name() { if [ "$1" = 0 ]; then echo "$RMQ_NODE"; else echo "$NODE_PREFIX$1@localhost"; fi; }
node_amqp_port() { echo $((AMQP_PORT + $1)); }
node_mgmt_port() { echo $((MGMT_PORT + $1)); }
node_dist_port() { echo $((RMQ_DIST_PORT + $1)); }
node_dir() { if [ "$1" = 0 ]; then echo "$RMQ_DIR"; else echo "$CLUSTER_DIR/node$1"; fi; }

# parse_node 0|single|1|2|3|outboxN@localhost -> 0..3
parse_node() {
	case "${1:-}" in
	0 | single | "$RMQ_NODE") echo 0 ;;
	1 | 2 | 3) echo "$1" ;;
	"${NODE_PREFIX}"[123]@localhost) echo "${1:${#NODE_PREFIX}:1}" ;;
	*) die "node must be 0 (or single), 1, 2 or 3, not '${1:-}'" ;;
	esac
}

cluster_urls() {
	local n sep= out=
	for n in "${CLUSTER_NODES[@]}"; do
		out+="${sep}amqp://$SVC_USER:$SVC_PASS@127.0.0.1:$(node_amqp_port "$n")/"
		sep=,
	done
	echo "$out"
}

print_cluster_env() { printf 'RELAY_TEST_CLUSTER_AMQP_URLS=%s\n' "$(cluster_urls)"; }

require_local_mode() {
	if [ "$(current_mode)" != local ]; then
		echo "services: '$1' is not supported in docker mode (local RabbitMQ processes only; set OUTBOXRELAY_SERVICES=local to use them)" >&2
		exit 2
	fi
}

resolve_cluster_dirs() {
	local create="${1:-}" n
	resolve_dirs "$create"
	if [ -n "$create" ]; then
		if [ -L "$STATE/rabbitmq" ] && [ ! -e "$STATE/rabbitmq-cluster" ] && [ ! -L "$STATE/rabbitmq-cluster" ]; then
			ln -sfn "$(dirname "$RMQ_DIR")/rabbitmq-cluster" "$STATE/rabbitmq-cluster"
		fi
		if [ -L "$STATE/rabbitmq-cluster" ]; then
			mkdir -p "$(readlink -m "$STATE/rabbitmq-cluster")"
		else
			mkdir -p "$STATE/rabbitmq-cluster"
		fi
	fi
	CLUSTER_DIR="$(readlink -f "$STATE/rabbitmq-cluster" 2>/dev/null || echo "$STATE/rabbitmq-cluster")"
	if [ -n "$create" ]; then
		for n in "${CLUSTER_NODES[@]}"; do
			mkdir -p "$CLUSTER_DIR/node$n/mnesia" "$CLUSTER_DIR/node$n/log"
		done
		chown -R rabbitmq:rabbitmq "$CLUSTER_DIR"
		chmod 750 "$CLUSTER_DIR"
	fi
}

node_env() { # sets RMQ_ENV for node N (0 = the single node)
	local n="$1"
	if [ "$n" = 0 ]; then
		rmq_env
		return 0
	fi
	local d="$CLUSTER_DIR/node$n" min=$((RMQ_CTL_DIST_MAX + 1 + (n - 1) * 20))
	RMQ_ENV=(
		HOME=/var/lib/rabbitmq
		LANG=C.UTF-8
		LC_ALL=C.UTF-8
		RABBITMQ_NODENAME="$(node_name "$n")"
		RABBITMQ_USE_LONGNAME=false
		RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
		RABBITMQ_NODE_PORT="$(node_amqp_port "$n")"
		RABBITMQ_DIST_PORT="$(node_dist_port "$n")"
		RABBITMQ_CTL_DIST_PORT_MIN="$min"
		RABBITMQ_CTL_DIST_PORT_MAX="$((min + 19))"
		RABBITMQ_MNESIA_BASE="$d/mnesia"
		RABBITMQ_LOG_BASE="$d/log"
		RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
		RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
		RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
		RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
		RABBITMQ_PID_FILE="$d/rabbitmq.pid"
		RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$CLUSTER_ERL_ARGS"
		RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
		ERL_EPMD_ADDRESS=127.0.0.1
	)
}

rmqn() { # rmqn N <tool> args...: run a RabbitMQ CLI tool against node N
	local n="$1" tool="$2"
	shift 2
	node_env "$n"
	as_user rabbitmq env "${RMQ_ENV[@]}" "$RMQ_BIN/$tool" "$@"
}


node_mgmt_ok() {
	curl -fsS -o /dev/null --max-time 3 -u "$SVC_USER:$SVC_PASS" \
		"http://127.0.0.1:$(node_mgmt_port "$1")/api/overview" 2>/dev/null
}

node_mgmt_answers() { # any HTTP answer at all (even 401)
	local code
	code="$(curl -s -o /dev/null --max-time 3 -w '%{http_code}' "http://127.0.0.1:$(node_mgmt_port "$1")/api/overview" 2>/dev/null)" || true
	[ -n "$code" ] && [ "$code" != 000 ]
}

# PIDs of node N's server VM (not of CLI tools, which carry the same env).
node_server_pids() {
	local name p comm
	name="$(node_name "$1")"
	for p in /proc/[0-9]*; do
		comm=
		read -r comm 2>/dev/null <"$p/comm" || continue
		[ "$comm" = beam.smp ] || continue
		tr '\0' '\n' 2>/dev/null <"$p/environ" | grep -qx "RABBITMQ_NODENAME=$name" || continue
		tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -- '-s rabbit boot' || continue
		if alive "${p#/proc/}"; then echo "${p#/proc/}"; fi
	done
}

node_down() {
	[ -z "$(node_server_pids "$1")" ] && ! port_open "$(node_amqp_port "$1")" &&
		! port_open "$(node_dist_port "$1")" && ! port_open "$(node_mgmt_port "$1")"
}

node_maybe_up() { [ -n "$(node_server_pids "$1")" ] || port_open "$(node_dist_port "$1")"; }

# node_cluster_list N running_nodes|disk_nodes: that list from N's cluster_status
node_cluster_list() {
	{ rmqn "$1" rabbitmqctl -q cluster_status --formatter json --timeout 10 2>/dev/null |
		sed -n "s/.*\"$2\":\[\([^]]*\)\].*/\1/p" | tr ',' '\n' | tr -d '" ' | grep -v '^$'; } || true
}

# Running cluster members as node N's management API sees them (fast).
mgmt_running_nodes() {
	{ curl -fsS --max-time 5 -u "$SVC_USER:$SVC_PASS" \
		"http://127.0.0.1:$(node_mgmt_port "$1")/api/nodes?columns=name,running" 2>/dev/null |
		sed 's/},{/}\n{/g' | grep '"running":true' | grep -o '"name":"[^"]*"' | cut -d'"' -f4; } || true
}

node_write_conf() {
	local n="$1" d
	d="$(node_dir "$n")"
	cat >"$d/rabbitmq.conf" <<CONF
# Managed by scripts/services.sh; rewritten on every start.
listeners.tcp.default = 127.0.0.1:$(node_amqp_port "$n")
management.tcp.ip = 127.0.0.1
management.tcp.port = $(node_mgmt_port "$n")
# Only applied when the node boots with an empty database:
default_vhost = /
default_user = $SVC_USER
default_pass = $SVC_PASS
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
log.console = false
log.file.level = info
CONF
	echo '[rabbitmq_management].' >"$d/enabled_plugins"
	echo '[].' >"$d/advanced.config"
	echo '# intentionally empty: all settings come from scripts/services.sh' >"$d/rabbitmq-env.conf"
	chown rabbitmq:rabbitmq "$d/rabbitmq.conf" "$d/enabled_plugins" "$d/advanced.config" "$d/rabbitmq-env.conf"
}

node_log_tail() {
	local d
	d="$(node_dir "$1")"
	log "---- tail of $d/server.out"
	tail -n 20 "$d/server.out" >&2 2>/dev/null || true
	log "---- tail of $d/log/$(node_name "$1").log"
	tail -n 40 "$d/log/$(node_name "$1").log" >&2 2>/dev/null || true
}

declare -A NODE_LAUNCH_PID=()
node_launch() {
	local n="$1" d
	d="$(node_dir "$n")"
	node_write_conf "$n"
	log "starting rabbitmq node $(node_name "$n") on 127.0.0.1:$(node_amqp_port "$n") (log: $d/log/)"
	node_env "$n"
	(
		cd /
		exec setsid runuser -u rabbitmq -- env "${RMQ_ENV[@]}" "$RMQ_BIN/rabbitmq-server"
	) </dev/null >>"$d/server.out" 2>&1 9>&- &
	NODE_LAUNCH_PID[$n]=$!
	disown "$!" 2>/dev/null || true
}

# Wait until node N runs the rabbit application and its management API answers.
node_wait_up() {
	local n="$1" deadline="$2" name pid hinted= since=$SECONDS relaunches=0
	name="$(node_name "$n")"
	pid="${NODE_LAUNCH_PID[$n]:-}"
	while :; do
		if node_mgmt_answers "$n" && rmqn "$n" rabbitmq-diagnostics -q check_running --timeout 5 >/dev/null 2>&1; then
			break
		fi
		if [ -n "$pid" ] && ! alive "$pid" && [ -z "$(node_server_pids "$n")" ]; then
			# RabbitMQ 3.10 sometimes aborts a boot while syncing feature
			# flags with a peer that is itself still starting
			# (incompatible_feature_flags / badmap); a second boot succeeds.
			if [ "$relaunches" -lt 2 ]; then
				relaunches=$((relaunches + 1))
				log "$name exited during startup; starting it again (retry $relaunches of 2)"
				node_launch "$n"
				pid="${NODE_LAUNCH_PID[$n]:-}"
				continue
			fi
			node_log_tail "$n"
			die "$name exited during startup"
		fi
		if [ -z "$hinted" ] && [ $((SECONDS - since)) -ge 20 ] &&
			tail -n 5 "$(node_dir "$n")/log/$name.log" 2>/dev/null | grep -q 'Waiting for Mnesia tables'; then
			log "$name waits for its cluster peers' tables (a node that was not the last to stop boots only once a peer is up)"
			hinted=1
		fi
		[ "$SECONDS" -lt "$deadline" ] || { node_log_tail "$n"; die "$name not running after ${CLUSTER_START_TIMEOUT}s"; }
		sleep 1
	done
	if ! node_mgmt_ok "$n"; then
		log "creating rabbitmq user $SVC_USER via $name"
		rmqn "$n" rabbitmqctl -q add_user "$SVC_USER" "$SVC_PASS" >&2 2>/dev/null ||
			rmqn "$n" rabbitmqctl -q change_password "$SVC_USER" "$SVC_PASS" >&2
		rmqn "$n" rabbitmqctl -q set_user_tags "$SVC_USER" administrator >&2
		rmqn "$n" rabbitmqctl -q set_permissions -p / "$SVC_USER" '.*' '.*' '.*' >&2
		node_mgmt_ok "$n" || { node_log_tail "$n"; die "management API of $name rejects $SVC_USER"; }
	fi
}

# Stop node N and wait until it is really gone (process exited, ports closed).
# Does not need any other node.
node_stop() {
	local n="$1" name pids i
	name="$(node_name "$n")"
	if node_maybe_up "$n"; then
		log "stopping rabbitmq node $name"
		rmqn "$n" rabbitmqctl -q shutdown --timeout 60 >&2 9>&- ||
			log "warning: rabbitmqctl shutdown of $name failed; will signal the process"
	fi
	for ((i = 0; i < 300; i++)); do
		node_down "$n" && { node_wait_peers_see_down "$n"; return 0; }
		sleep 0.2
	done
	pids="$(node_server_pids "$n")"
	if [ -n "$pids" ]; then
		log "$name still running (pid $pids); sending TERM"
		# shellcheck disable=SC2086
		kill -TERM $pids 2>/dev/null || true
		for ((i = 0; i < 75; i++)); do
			[ -z "$(node_server_pids "$n")" ] && break
			sleep 0.2
		done
		pids="$(node_server_pids "$n")"
		# shellcheck disable=SC2086
		[ -z "$pids" ] || { log "sending KILL to $pids"; kill -KILL $pids 2>/dev/null || true; }
	fi
	for ((i = 0; i < 100; i++)); do
		node_down "$n" && { node_wait_peers_see_down "$n"; return 0; }
		sleep 0.2
	done
	die "$name still not down (pids: $(node_server_pids "$n" | tr '\n' ' '); ports $(node_amqp_port "$n")/$(node_dist_port "$n")/$(node_mgmt_port "$n"))"
}

# After node N stopped, give the running cluster members (if any) up to 15s to
# notice, so that what a test does next does not race their view of it.
node_wait_peers_see_down() {
	[ "$1" != 0 ] || return 0
	local name m i
	name="$(node_name "$1")"
	for m in "${CLUSTER_NODES[@]}"; do
		[ "$m" != "$1" ] && node_mgmt_ok "$m" || continue
		for ((i = 0; i < 75; i++)); do
			mgmt_running_nodes "$m" | grep -qx "$name" || break
			sleep 0.2
		done
	done
}

# Nodes 3 and 2 stop together, node 1 last: the last node to stop can later
# boot on its own (`node-start 1`), the others wait for a peer.
cluster_stop_all() {
	local n p pids=() rc=0
	for n in 3 2; do
		if node_maybe_up "$n" || ! node_down "$n"; then
			node_stop "$n" &
			pids+=("$!")
		fi
	done
	for p in "${pids[@]}"; do wait "$p" || rc=1; done
	[ "$rc" = 0 ] || die "could not stop every cluster node"
	if node_maybe_up 1 || ! node_down 1; then node_stop 1; fi
}

cluster_count() { grep -cx "${NODE_PREFIX}[123]@localhost" || true; }

cluster_healthy() {
	local n
	for n in "${CLUSTER_NODES[@]}"; do node_mgmt_ok "$n" || return 1; done
	[ "$(mgmt_running_nodes 1 | cluster_count)" = 3 ]
}

# Make node N (2 or 3) a member of node 1's cluster, unless it is one already.
cluster_join() {
	local n="$1" name seed mine theirs
	name="$(node_name "$n")"
	seed="$(node_name 1)"
	mine="$(node_cluster_list "$n" disk_nodes)"
	theirs="$(node_cluster_list 1 disk_nodes)"
	if grep -qx "$seed" <<<"$mine" && grep -qx "$name" <<<"$theirs"; then
		return 0
	fi
	if grep -qx "$name" <<<"$theirs"; then
		log "$seed lists $name as a member but $name does not know the cluster; forgetting it first"
		rmqn 1 rabbitmqctl -q forget_cluster_node "$name" >&2 || true
	fi
	log "joining $name to $seed"
	# The CLI logs harmless feature-flag/tracking-table warnings while a node
	# joins; show its output only when a step fails.
	local out="$(node_dir "$n")/join.out"
	{
		rmqn "$n" rabbitmqctl -q stop_app &&
			{ rmqn "$n" rabbitmqctl -q reset || rmqn "$n" rabbitmqctl -q force_reset; } &&
			rmqn "$n" rabbitmqctl -q join_cluster "$seed" &&
			rmqn "$n" rabbitmqctl -q start_app
	} >"$out" 2>&1 || {
		cat "$out" >&2
		rmqn "$n" rabbitmqctl -q start_app >&2 || true
		die "could not join $name to $seed"
	}
}

cmd_cluster_up() {
	require_local_mode cluster-up
	take_lock
	ensure_packages
	resolve_cluster_dirs create
	if cluster_healthy; then
		log "rabbitmq cluster already running (3 nodes)"
		print_cluster_env
		return 0
	fi
	local n deadline=$((SECONDS + CLUSTER_START_TIMEOUT))
	# Start all stopped nodes at once: a node that was not the last one to
	# stop waits for its peers before it finishes booting.
	for n in "${CLUSTER_NODES[@]}"; do
		if node_maybe_up "$n"; then node_write_conf "$n"; else node_launch "$n"; fi
	done
	for n in "${CLUSTER_NODES[@]}"; do node_wait_up "$n" "$deadline"; done
	for n in "${CLUSTER_NODES[@]:1}"; do cluster_join "$n"; done
	local running
	while :; do
		running="$(node_cluster_list 1 running_nodes)"
		[ "$(cluster_count <<<"$running")" = 3 ] && break
		[ "$SECONDS" -lt "$deadline" ] || die "cluster_status of $(node_name 1) shows running nodes: $(echo $running)"
		sleep 1
	done
	for n in "${CLUSTER_NODES[@]}"; do
		until node_mgmt_ok "$n"; do
			[ "$SECONDS" -lt "$deadline" ] || { node_log_tail "$n"; die "management API of $(node_name "$n") not answering"; }
			sleep 1
		done
	done
	log "rabbitmq cluster ready: $(echo $running)"
	print_cluster_env
}

cmd_cluster_down() {
	require_local_mode cluster-down
	take_lock
	RMQ_BIN="$(find_rmq_bin)"
	[ -n "$RMQ_BIN" ] || return 0
	resolve_cluster_dirs
	cluster_stop_all
	log "rabbitmq cluster stopped"
}

cmd_cluster_clean() {
	cmd_cluster_down
	local target
	if [ -L "$STATE/rabbitmq-cluster" ]; then
		target="$(readlink -f "$STATE/rabbitmq-cluster" || true)"
		[ -z "$target" ] || rm -rf "$target"
		rm -f "$STATE/rabbitmq-cluster"
	else
		rm -rf "${STATE:?}/rabbitmq-cluster"
	fi
	log "rabbitmq cluster state removed"
}

cmd_node_stop() {
	local n
	n="$(parse_node "${1:-}")"
	require_local_mode node-stop
	take_lock
	RMQ_BIN="$(find_rmq_bin)"
	[ -n "$RMQ_BIN" ] || die "no rabbitmq-server found"
	resolve_cluster_dirs
	node_stop "$n"
	log "$(node_name "$n") stopped"
}

cmd_node_start() {
	local n
	n="$(parse_node "${1:-}")"
	require_local_mode node-start
	take_lock
	ensure_packages
	resolve_cluster_dirs create
	if [ "$n" = 0 ]; then
		rmq_start_local
		return 0
	fi
	local name deadline=$((SECONDS + CLUSTER_START_TIMEOUT)) m peer=
	name="$(node_name "$n")"
	if node_maybe_up "$n"; then node_write_conf "$n"; else node_launch "$n"; fi
	node_wait_up "$n" "$deadline"
	for m in "${CLUSTER_NODES[@]}"; do
		[ "$m" != "$n" ] && node_mgmt_ok "$m" && { peer="$m"; break; }
	done
	if [ -z "$peer" ]; then
		log "$name is up; no other cluster node is running"
		return 0
	fi
	if ! node_cluster_list "$peer" disk_nodes | grep -qx "$name"; then
		log "warning: $name is up but not a member of $(node_name "$peer")'s cluster; run cluster-up to join it"
		return 0
	fi
	until node_cluster_list "$peer" running_nodes | grep -qx "$name"; do
		[ "$SECONDS" -lt "$deadline" ] || die "$name is up but not running in $(node_name "$peer")'s cluster_status"
		sleep 1
	done
	log "$name is up and running in the cluster"
}

cmd_rabbitmqctl() {
	local n
	n="$(parse_node "${1:-}")"
	shift
	require_local_mode rabbitmqctl
	RMQ_BIN="$(find_rmq_bin)"
	[ -n "$RMQ_BIN" ] || die "no rabbitmq-server found"
	resolve_cluster_dirs
	rmqn "$n" rabbitmqctl "$@"
}

cluster_status_lines() {
	local n name any=
	for n in "${CLUSTER_NODES[@]}"; do
		name="$(node_name "$n")"
		if node_mgmt_ok "$n"; then
			echo "rabbitmq cluster node $name: running (amqp 127.0.0.1:$(node_amqp_port "$n"), management http://127.0.0.1:$(node_mgmt_port "$n")/)"
			any="$n"
		elif node_maybe_up "$n"; then
			echo "rabbitmq cluster node $name: process up, management not answering"
		else
			echo "rabbitmq cluster node $name: not running"
		fi
	done
	if [ -n "$any" ]; then
		echo "rabbitmq cluster: running members per $(node_name "$any"): $(mgmt_running_nodes "$any" | tr '\n' ' ')"
	fi
}

# ---------------------------------------------------------------- orphans

# A service left running from a work tree that has since been deleted keeps
# answering but cannot write new files. Detect that (data directory gone) and
# stop it, so `up` starts a fresh one instead of reusing a broken one.
listener_pid() {
	ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2 || true
}

stop_pid_and_wait_port() {
	local pid="$1" sig="$2" port="$3" i
	kill -"$sig" "$pid" 2>/dev/null || true
	for ((i = 0; i < 300; i++)); do
		alive "$pid" || break
		sleep 0.1
	done
	alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		(exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null || return 0
		sleep 0.1
	done
}

stop_orphans() {
	[ "$(id -u)" = 0 ] && command -v ss >/dev/null 2>&1 || return 0
	local pid dir
	pid="$(listener_pid "$PG_PORT")"
	if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ]; then
		dir="$(readlink "/proc/$pid/cwd" 2>/dev/null || true)"
		if [ -n "$dir" ] && { [[ "$dir" == *" (deleted)" ]] || [ ! -f "$dir/PG_VERSION" ]; }; then
			log "postgres on :$PG_PORT (pid $pid) runs on a deleted data directory ($dir); stopping it"
			stop_pid_and_wait_port "$pid" INT "$PG_PORT"
		fi
	fi
	pid="$(listener_pid "$AMQP_PORT")"
	if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = beam.smp ]; then
		dir="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | sed -n "s/^RABBITMQ_MNESIA_BASE=//p" | head -n 1 || true)"
		if [ -n "$dir" ] && [ ! -d "$dir" ]; then
			log "rabbitmq on :$AMQP_PORT (pid $pid) runs on a deleted data directory ($dir); stopping it"
			stop_pid_and_wait_port "$pid" TERM "$AMQP_PORT"
		fi
	fi
}

# ---------------------------------------------------------------- demo processes

# stop_demo_process PID_FILE NAME: stop what scripts/demo.sh started, if its
# pid still belongs to a process whose command line mentions NAME.
stop_demo_process() {
	local pid_file="$1" name="$2" pid i
	[ -f "$pid_file" ] || return 0
	pid="$(cat "$pid_file" 2>/dev/null || true)"
	if [ -n "$pid" ] && alive "$pid" && grep -qa "$name" "/proc/$pid/cmdline" 2>/dev/null; then
		log "stopping demo $name (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			alive "$pid" || break
			sleep 0.1
		done
		alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$pid_file"
}

# The consumer first: it is downstream of the relay.
stop_demo_processes() {
	stop_demo_process "$DEMO_CONSUMER_PID_FILE" orders-consumer
	stop_demo_process "$DEMO_PID_FILE" relay
}

# ---------------------------------------------------------------- commands

cmd_up() {
	take_lock
	local mode
	mode="$(pick_mode)"
	if [ "$mode" = docker ]; then
		log "docker engine available: using docker-compose.yml"
		compose up -d --wait postgres rabbitmq >&2
	else
		stop_orphans
		if pg_ready && mgmt_ok; then
			log "postgres and rabbitmq already running"
		else
			ensure_packages
			resolve_dirs create
			if pg_ready; then log "postgres already answering on 127.0.0.1:$PG_PORT"; else pg_start_local; fi
			rmq_start_local
		fi
	fi
	echo "$mode" >"$MODE_FILE"
	write_env_file
	print_env
}

cmd_down() {
	take_lock
	stop_demo_processes
	RMQ_BIN="$(find_rmq_bin)"
	if [ -n "$RMQ_BIN" ]; then
		resolve_cluster_dirs
		cluster_stop_all
	fi
	if [ "$(current_mode)" = docker ] && docker_works; then
		compose down >&2
	else
		PG_BIN="$(find_pg_bin)"
		resolve_dirs
		rmq_stop_local
		pg_stop_local
	fi
	log "services stopped"
}

cmd_clean() {
	cmd_down
	local target
	for d in pg rabbitmq rabbitmq-cluster; do
		if [ -L "$STATE/$d" ]; then
			target="$(readlink -f "$STATE/$d" || true)"
			[ -z "$target" ] || rm -rf "$target"
			rm -f "$STATE/$d"
			rmdir "$(dirname "$target")" 2>/dev/null || rm -f "$(dirname "$target")/ROOT" 2>/dev/null || true
			rmdir "$(dirname "$target")" 2>/dev/null || true
		else
			rm -rf "${STATE:?}/$d"
		fi
	done
	rm -f "$MODE_FILE" "$ENV_FILE"
	log "state removed"
}

cmd_status() {
	local mode
	mode="$(current_mode)"
	echo "mode: $mode"
	if [ "$mode" = docker ] && docker_works; then
		compose ps
	fi
	if pg_ready; then echo "postgres: running (127.0.0.1:$PG_PORT)"; else echo "postgres: not running"; fi
	if mgmt_ok; then
		echo "rabbitmq: running (amqp 127.0.0.1:$AMQP_PORT, management http://127.0.0.1:$MGMT_PORT/)"
	else
		RMQ_BIN="$(find_rmq_bin)"
		resolve_dirs
		if [ "$mode" = local ] && rmq_ping; then echo "rabbitmq: node $RMQ_NODE up, management not answering"; else echo "rabbitmq: not running"; fi
	fi
	if [ "$mode" = local ]; then
		resolve_cluster_dirs
		cluster_status_lines
	fi
	local pid
	pid="$(cat "$DEMO_PID_FILE" 2>/dev/null || true)"
	if [ -n "$pid" ] && alive "$pid"; then echo "demo relay: running (pid $pid)"; else echo "demo relay: not running"; fi
	pid="$(cat "$DEMO_CONSUMER_PID_FILE" 2>/dev/null || true)"
	if [ -n "$pid" ] && alive "$pid"; then echo "demo consumer: running (pid $pid)"; else echo "demo consumer: not running"; fi
	if [ -e "$STATE/pg" ]; then echo "state: $STATE (data in $(readlink -f "$STATE/pg" | xargs dirname))"; fi
}

cmd_rabbit_stop() {
	take_lock
	if [ "$(current_mode)" = docker ] && docker_works; then
		compose stop rabbitmq >&2
	else
		RMQ_BIN="$(find_rmq_bin)"
		resolve_dirs
		rmq_stop_local
	fi
	log "rabbitmq stopped"
}

cmd_rabbit_start() {
	take_lock
	if [ "$(current_mode)" = docker ] && docker_works; then
		compose up -d --wait rabbitmq >&2
	else
		ensure_packages
		resolve_dirs create
		rmq_start_local
	fi
}

cmd_pg_restart() {
	take_lock
	if [ "$(current_mode)" = docker ] && docker_works; then
		compose restart postgres >&2
		compose up -d --wait postgres >&2
	else
		ensure_packages
		resolve_dirs create
		if ! pg_local_running && pg_ready; then
			die "the postgres on 127.0.0.1:$PG_PORT was not started from this checkout ($PG_DIR): run 'scripts/services.sh down' in the checkout that started it, then retry"
		fi
		pg_stop_local
		pg_start_local
	fi
	log "postgres restarted"
}

# pgbouncer-bin: install Debian's pgbouncer if missing and print its path
# (tests run their own pgbouncer processes; none is started here).
cmd_pgbouncer_bin() {
	local bin
	bin="$(command -v pgbouncer || true)"
	[ -n "$bin" ] || [ ! -x /usr/sbin/pgbouncer ] || bin=/usr/sbin/pgbouncer
	if [ -z "$bin" ]; then
		take_lock
		apt_install pgbouncer
		bin="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
	fi
	[ -x "$bin" ] || die "pgbouncer not found after install"
	echo "$bin"
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
env) print_env ;;
rabbit-stop) cmd_rabbit_stop ;;
rabbit-start) cmd_rabbit_start ;;
pg-restart) cmd_pg_restart ;;
clean) cmd_clean ;;
cluster-up) cmd_cluster_up ;;
cluster-down) cmd_cluster_down ;;
cluster-clean) cmd_cluster_clean ;;
node-stop) cmd_node_stop "${2:-}" ;;
node-start) cmd_node_start "${2:-}" ;;
pgbouncer-bin) cmd_pgbouncer_bin ;;
demo-stop) stop_demo_processes ;;
rabbitmqctl)
	shift
	cmd_rabbitmqctl "$@"
	;;
*)
	echo "usage: $0 up|down|status|env|rabbit-stop|rabbit-start|pg-restart|clean" >&2
	echo "       $0 cluster-up|cluster-down|cluster-clean|node-stop N|node-start N|rabbitmqctl N ARGS..." >&2
	echo "       $0 pgbouncer-bin|demo-stop" >&2
	exit 2
	;;
esac
