#!/usr/bin/env bash
# Local test services for outboxrelay: PostgreSQL + RabbitMQ (with management).
#
# Usage: scripts/services.sh up|down|status|env|rabbit-stop|rabbit-start|pg-restart|clean
#        scripts/services.sh cluster-up|cluster-down|cluster-clean
#        scripts/services.sh netns-up [ignore|pause_minority]|netns-down|netns-clean|netns-status
#        scripts/services.sh netns-isolate N|netns-bridge A B|netns-heal [--wait]|netns-leader QUEUE
#        scripts/services.sh node-stop N|node-start N|rabbitmqctl N ARGS...
#
#   up            start both services (idempotent, safe to run concurrently) and
#                 print the RELAY_TEST_* variables on stdout; services started
#                 before TLS existed get it (PostgreSQL reloads, RabbitMQ
#                 restarts)
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
# Partition-suite cluster (local mode, root; scripts/services/netns.sh): three
# nodes rabbit@10.213.S.N (N=1..3, S = the slot), each in its own network
# namespace orelay-sS-nN joined by veth pairs to the bridge orbrS
# (10.213.S.254 in the root namespace); AMQP 10.213.S.N:5672, management
# 10.213.S.N:15672; net_ticktime 10 s. Partitions are blackhole routes inside
# the namespaces: node-to-node traffic is cut, clients still reach each node.
#   netns-up [ignore|pause_minority]  create the namespaces and start/join the
#                 nodes with that cluster_partition_handling (default ignore;
#                 another mode than the running one restarts the nodes); wait
#                 until every node shows 3 running nodes and no partition;
#                 print RELAY_TEST_NETNS_AMQP_URLS and _MANAGEMENT_URLS
#   netns-down    stop the nodes, remove the namespaces and the bridge (data kept)
#   netns-clean   netns-down + delete the nodes' data
#   netns-isolate N  cut node N off from the other two
#   netns-bridge A B  cut A from B (and B from A); the third node sees both
#   netns-heal [--wait]  remove every cut; with --wait, also wait until the
#                 cluster has settled (3 running nodes, no partition), under
#                 ignore restarting the rabbit app of a node that still
#                 reports a partition 20 s after the heal
#   netns-leader QUEUE  print the number (1..3) of the node leading quorum
#                 queue QUEUE (vhost /)
#   netns-status  the nodes, their view of the cluster and the cuts in place
# Failover-test PostgreSQL pair (local mode only; scripts/services/pgpair.sh):
#   pg-pair-up [sync|async]  a primary (PG_PORT+6) and a streaming standby
#                 (PG_PORT+7, pg_basebackup -R) with data under
#                 .services/pgpair/; sync (the default) makes the standby
#                 synchronous (synchronous_standby_names = '*'), async does
#                 not. Waits until the standby streams (as sync, in sync
#                 mode); reuses a healthy pair of that mode, rebuilds
#                 anything else (e.g. after a promotion). Prints
#                 RELAY_TEST_PGPAIR_URL (the multi-host URL with
#                 target_session_attrs=read-write) and the nodes' own URLs.
#   pg-pair-promote          promote the standby (pg_ctl promote -w) and
#                 check it left recovery
#   pg-pair-stop-primary [fast|immediate]  stop the primary (immediate is
#                 the default: a crash, no shutdown checkpoint)
#   pg-pair-url   print RELAY_TEST_PGPAIR_* (starts nothing)
#   pg-pair-down  stop both nodes (data kept); pg-pair-clean also deletes it
#
# If `docker info` works, the services from docker-compose.yml are used.
# Otherwise PostgreSQL and RabbitMQ run as local processes (as the postgres and
# rabbitmq users) with their state under $ROOT/.services/. Set
# OUTBOXRELAY_SERVICES=local|docker to force a mode.
#
# Everything listens on 127.0.0.1 only. Slot 0 (the first checkout; see
# "slot" below, slot S adds 10*S to each port and 80*S to the CLI range):
#   PostgreSQL 55432 (plain and TLS), AMQP 56720, AMQP over TLS 56725,
#   management HTTP 15680,
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

LIB="$ROOT/scripts/services"
# shellcheck source=services/common.sh
. "$LIB/common.sh"
# shellcheck source=services/slot.sh
. "$LIB/slot.sh"
# shellcheck source=services/packages.sh
. "$LIB/packages.sh"
# shellcheck source=services/tls.sh
. "$LIB/tls.sh"
# shellcheck source=services/postgres.sh
. "$LIB/postgres.sh"
# shellcheck source=services/rabbitmq.sh
. "$LIB/rabbitmq.sh"
# shellcheck source=services/cluster.sh
. "$LIB/cluster.sh"
# shellcheck source=services/netns.sh
. "$LIB/netns.sh"
# shellcheck source=services/pgpair.sh
. "$LIB/pgpair.sh"

if [ -n "${OUTBOXRELAY_SLOT:-}" ]; then
	[[ "$OUTBOXRELAY_SLOT" =~ ^[0-9]$ ]] || die "OUTBOXRELAY_SLOT must be 0-9"
	set_slot_vars "$OUTBOXRELAY_SLOT"
elif [ -s "$STATE/slot" ]; then
	set_slot_vars "$(cat "$STATE/slot")"
elif [ "${1:-}" = up ] || [ "${1:-}" = cluster-up ] || [ "${1:-}" = netns-up ]; then
	slot="$(claim_slot)" || exit 1
	set_slot_vars "$slot"
else
	case "${1:-}" in
	down | clean | demo-stop | netns-down | netns-clean | netns-heal)
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
		if pg_ready && mgmt_ok && tls_ok; then
			log "postgres and rabbitmq already running"
		else
			ensure_packages
			resolve_dirs create
			if pg_ready; then pg_tls_reload; else pg_start_local; fi
			rmq_start_local
		fi
	fi
	ensure_sample_clients
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
		resolve_netns_dirs
		netns_stop_all
	fi
	[ "$(id -u)" != 0 ] || ! command -v ip >/dev/null 2>&1 || netns_net_down
	if [ "$(current_mode)" = docker ] && docker_works; then
		compose down >&2
	else
		PG_BIN="$(find_pg_bin)"
		resolve_dirs
		rmq_stop_local
		pg_stop_local
		pgpair_vars
		pgpair_stop_node standby fast
		pgpair_stop_node primary fast
	fi
	log "services stopped"
}

cmd_clean() {
	cmd_down
	local target
	[ -z "$PGPAIR_DIR" ] || rm -rf "${PGPAIR_DIR:?}"
	for d in pg rabbitmq rabbitmq-cluster rabbitmq-netns; do
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
		if [ "$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1 && netns_exists 1; then
			resolve_netns_dirs
			netns_status_lines
		fi
		resolve_dirs
		pgpair_status_lines
	fi
	local pid
	pid="$(cat "$DEMO_PID_FILE" 2>/dev/null || true)"
	if [ -n "$pid" ] && alive "$pid"; then echo "demo relay: running (pid $pid)"; else echo "demo relay: not running"; fi
	pid="$(cat "$DEMO_CONSUMER_PID_FILE" 2>/dev/null || true)"
	if [ -n "$pid" ] && alive "$pid"; then echo "demo consumer: running (pid $pid)"; else echo "demo consumer: not running"; fi
	if [ -e "$STATE/pg" ]; then echo "state: $STATE (data in $(readlink -f "$STATE/pg" | xargs dirname))"; fi
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
pg-pair-up) cmd_pgpair_up "${2:-sync}" ;;
pg-pair-promote) cmd_pgpair_promote ;;
pg-pair-stop-primary) cmd_pgpair_stop_primary "${2:-immediate}" ;;
pg-pair-url) cmd_pgpair_env ;;
pg-pair-down) cmd_pgpair_down ;;
pg-pair-clean) cmd_pgpair_clean ;;
pgbouncer-bin) cmd_pgbouncer_bin ;;
demo-stop) stop_demo_processes ;;
netns-up) cmd_netns_up "${2:-}" ;;
netns-down) cmd_netns_down ;;
netns-clean) cmd_netns_clean ;;
netns-isolate) cmd_netns_isolate "${2:-}" ;;
netns-bridge) cmd_netns_bridge "${2:-}" "${3:-}" ;;
netns-heal) cmd_netns_heal "${2:-}" ;;
netns-leader) cmd_netns_leader "${2:-}" ;;
netns-status) cmd_netns_status ;;
rabbitmqctl)
	shift
	cmd_rabbitmqctl "$@"
	;;
*)
	echo "usage: $0 up|down|status|env|rabbit-stop|rabbit-start|pg-restart|clean" >&2
	echo "       $0 cluster-up|cluster-down|cluster-clean|node-stop N|node-start N|rabbitmqctl N ARGS..." >&2
	echo "       $0 netns-up [ignore|pause_minority]|netns-down|netns-clean|netns-status" >&2
	echo "       $0 netns-isolate N|netns-bridge A B|netns-heal [--wait]|netns-leader QUEUE" >&2
	echo "       $0 pg-pair-up [sync|async]|pg-pair-promote|pg-pair-stop-primary [fast|immediate]|pg-pair-url|pg-pair-down|pg-pair-clean" >&2
	echo "       $0 pgbouncer-bin|demo-stop" >&2
	exit 2
	;;
esac
