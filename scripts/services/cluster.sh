# shellcheck shell=bash
# Sourced by scripts/services.sh: the fault suite's three-node RabbitMQ cluster.

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
	local n="$1"
	rmq_write_node_files "$(node_dir "$n")" "$(node_mgmt_port "$n")" <<CONF
listeners.tcp.default = 127.0.0.1:$(node_amqp_port "$n")
CONF
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
