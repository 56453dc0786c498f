# shellcheck shell=bash
# Sourced by scripts/services.sh: the partition suite's three-node RabbitMQ
# cluster, each node in a network namespace of its own.

# ---------------------------------------------------------------- netns cluster

# Layout in slot S (local mode only, root only):
#   namespaces  orelay-sS-n1 .. orelay-sS-n3, created here and nothing else
#   bridge      orbrS in the root namespace, address 10.213.S.254/24
#   veth pairs  orS-nN (root side, on the bridge) <-> eth0 in namespace N,
#               address 10.213.S.N/24
#   node N      rabbit@10.213.S.N (long names by IP), AMQP 10.213.S.N:5672,
#               management 10.213.S.N:15672, distribution 25672, its own epmd
#               (each namespace has its own network stack, so the standard
#               ports never collide with another checkout's)
#   state       $STATE/rabbitmq-netns/nodeN/{mnesia,log} (beside rabbitmq/)
# Clients in the root namespace reach every node through the bridge. A
# partition is made inside the namespaces only: node N drops what it sends
# to a peer's address (`ip route add blackhole 10.213.S.M/32` in N's
# namespace), so node-to-node traffic is cut while each node's clients
# (10.213.S.254) keep their connections.
#
# net_ticktime is 10 s (RabbitMQ's default is 60): a peer that went silent is
# declared down after 7.5-12.5 s, so pause_minority pauses the minority and
# the majority's Mnesia view changes within the suite's 15 s stall budget.
# Lower values risk false partitions on a loaded 2-core test machine.
NETNS_NODES=(1 2 3)
NETNS_DIR=
NETNS_START_TIMEOUT=180
NETNS_NET_TICKTIME=10

netns_subnet() { echo "10.213.$SLOT"; }
netns_ip() { echo "$(netns_subnet).$1"; }
netns_name() { echo "orelay-s$SLOT-n$1"; }
netns_veth() { echo "or$SLOT-n$1"; }
netns_bridge() { echo "orbr$SLOT"; }
netns_node_name() { echo "rabbit@$(netns_ip "$1")"; }
netns_dir() { echo "$NETNS_DIR/node$1"; }
netns_mode_file() { echo "$NETNS_DIR/partition_handling"; }

netns_urls() {
	local n sep= out=
	for n in "${NETNS_NODES[@]}"; do
		out+="${sep}amqp://$SVC_USER:$SVC_PASS@$(netns_ip "$n"):5672/"
		sep=,
	done
	echo "$out"
}

netns_mgmt_urls() {
	local n sep= out=
	for n in "${NETNS_NODES[@]}"; do
		out+="${sep}http://$SVC_USER:$SVC_PASS@$(netns_ip "$n"):15672/"
		sep=,
	done
	echo "$out"
}

print_netns_env() {
	printf 'RELAY_TEST_NETNS_AMQP_URLS=%s\n' "$(netns_urls)"
	printf 'RELAY_TEST_NETNS_MANAGEMENT_URLS=%s\n' "$(netns_mgmt_urls)"
	printf 'RELAY_TEST_NETNS_PARTITION_HANDLING=%s\n' "$(cat "$(netns_mode_file)" 2>/dev/null || true)"
}

parse_netns_node() {
	case "${1:-}" in
	1 | 2 | 3) echo "$1" ;;
	*) die "node must be 1, 2 or 3, not '${1:-}'" ;;
	esac
}

# netns_require: what the namespaced cluster needs, checked up front; a
# missing capability is an error, never a silent skip.
netns_require() {
	require_local_mode "$1"
	[ "$(id -u)" = 0 ] || die "$1 needs root (network namespaces, veth pairs, runuser)"
	command -v ip >/dev/null 2>&1 || apt_install iproute2
	command -v ip >/dev/null 2>&1 || die "$1 needs iproute2 (ip)"
	ip netns list >/dev/null 2>&1 || die "$1: 'ip netns' does not work here (no network namespace support?)"
}

resolve_netns_dirs() {
	local create="${1:-}" n
	resolve_dirs "$create"
	if [ -n "$create" ]; then
		if [ -L "$STATE/rabbitmq" ] && [ ! -e "$STATE/rabbitmq-netns" ] && [ ! -L "$STATE/rabbitmq-netns" ]; then
			ln -sfn "$(dirname "$RMQ_DIR")/rabbitmq-netns" "$STATE/rabbitmq-netns"
		fi
		if [ -L "$STATE/rabbitmq-netns" ]; then
			mkdir -p "$(readlink -m "$STATE/rabbitmq-netns")"
		else
			mkdir -p "$STATE/rabbitmq-netns"
		fi
	fi
	NETNS_DIR="$(readlink -f "$STATE/rabbitmq-netns" 2>/dev/null || echo "$STATE/rabbitmq-netns")"
	if [ -n "$create" ]; then
		for n in "${NETNS_NODES[@]}"; do
			mkdir -p "$NETNS_DIR/node$n/mnesia" "$NETNS_DIR/node$n/log"
		done
		chown -R rabbitmq:rabbitmq "$NETNS_DIR"
		chmod 750 "$NETNS_DIR"
	fi
}

# ---- the network

netns_exists() { [ -e "/run/netns/$(netns_name "$1")" ]; }

# netns_net_up: the bridge, the namespaces and their veth pairs (idempotent).
netns_net_up() {
	local br n ns veth
	br="$(netns_bridge)"
	if ! ip link show "$br" >/dev/null 2>&1; then
		log "creating bridge $br ($(netns_ip 254)/24)"
		ip link add "$br" type bridge
	fi
	ip addr replace "$(netns_ip 254)/24" dev "$br"
	ip link set "$br" up
	for n in "${NETNS_NODES[@]}"; do
		ns="$(netns_name "$n")"
		veth="$(netns_veth "$n")"
		netns_exists "$n" || { log "creating network namespace $ns"; ip netns add "$ns"; }
		if ! ip link show "$veth" >/dev/null 2>&1; then
			ip link add "$veth" type veth peer name eth0 netns "$ns"
		fi
		ip link set "$veth" master "$br"
		ip link set "$veth" up
		ip -n "$ns" link set lo up
		ip -n "$ns" addr replace "$(netns_ip "$n")/24" dev eth0
		ip -n "$ns" link set eth0 up
	done
}

# netns_net_down: end every process left in our namespaces, then remove them
# and the bridge.
netns_net_down() {
	local n ns pids i
	for n in "${NETNS_NODES[@]}"; do
		netns_exists "$n" || continue
		ns="$(netns_name "$n")"
		pids="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
		if [ -n "${pids// /}" ]; then
			log "ending processes left in $ns: $pids"
			# shellcheck disable=SC2086
			kill -TERM $pids 2>/dev/null || true
			for ((i = 0; i < 50; i++)); do
				[ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break
				sleep 0.2
			done
			pids="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
			# shellcheck disable=SC2086
			[ -z "${pids// /}" ] || kill -KILL $pids 2>/dev/null || true
		fi
		ip netns del "$ns"
	done
	ip link del "$(netns_bridge)" 2>/dev/null || true
}

# ---- partitions

# netns_block FROM TO: node FROM drops every packet it sends to node TO.
netns_block() { ip -n "$(netns_name "$1")" route replace blackhole "$(netns_ip "$2")/32"; }

netns_heal_routes() {
	local n m
	for n in "${NETNS_NODES[@]}"; do
		netns_exists "$n" || continue
		for m in "${NETNS_NODES[@]}"; do
			[ "$m" = "$n" ] || ip -n "$(netns_name "$n")" route del blackhole "$(netns_ip "$m")/32" 2>/dev/null || true
		done
	done
}

netns_blocks() { # the blackhole routes, one "N -> M" per line
	local n
	for n in "${NETNS_NODES[@]}"; do
		netns_exists "$n" || continue
		ip -n "$(netns_name "$n")" route show type blackhole 2>/dev/null |
			sed -n "s/^blackhole $(netns_subnet | sed 's/\./\\./g')\.\([0-9]*\).*/$n -> \1/p"
	done
}

# ---- the nodes

netns_env() { # sets RMQ_ENV for node N
	local n="$1" d ip erl
	d="$(netns_dir "$n")"
	ip="$(netns_ip "$n")"
	erl="-kernel inet_dist_use_interface {${ip//./,}}"
	RMQ_ENV=(
		HOME=/var/lib/rabbitmq
		LANG=C.UTF-8
		LC_ALL=C.UTF-8
		RABBITMQ_NODENAME="$(netns_node_name "$n")"
		RABBITMQ_USE_LONGNAME=true
		RABBITMQ_NODE_IP_ADDRESS="$ip"
		RABBITMQ_NODE_PORT=5672
		RABBITMQ_DIST_PORT=25672
		RABBITMQ_MNESIA_BASE="$d/mnesia"
		RABBITMQ_LOG_BASE="$d/log"
		RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
		RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
		RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
		RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
		RABBITMQ_PID_FILE="$d/rabbitmq.pid"
		RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$erl +S 1:1"
		RABBITMQ_CTL_ERL_ARGS="$erl"
	)
}

nsrmq() { # nsrmq N <tool> args...: run a RabbitMQ CLI tool inside node N's namespace
	local n="$1" tool="$2"
	shift 2
	netns_env "$n"
	(cd / && ip netns exec "$(netns_name "$n")" runuser -u rabbitmq -- env "${RMQ_ENV[@]}" "$RMQ_BIN/$tool" "$@")
}

netns_write_conf() {
	local n="$1" mode="$2"
	rmq_write_node_files "$(netns_dir "$n")" 15672 "$(netns_ip "$n")" <<CONF
listeners.tcp.default = $(netns_ip "$n"):5672
cluster_partition_handling = $mode
net_ticktime = $NETNS_NET_TICKTIME
CONF
}

netns_server_pids() { # node N's server VM (not CLI tools)
	local n="$1" p
	netns_exists "$n" || return 0
	for p in $(ip netns pids "$(netns_name "$n")" 2>/dev/null); do
		[ "$(cat "/proc/$p/comm" 2>/dev/null)" = beam.smp ] || continue
		tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -q -- '-s rabbit boot' || continue
		if alive "$p"; then echo "$p"; fi
	done
}

netns_mgmt_ok() {
	curl -fsS -o /dev/null --max-time 3 -u "$SVC_USER:$SVC_PASS" \
		"http://$(netns_ip "$1"):15672/api/overview" 2>/dev/null
}

netns_log_tail() {
	local d
	d="$(netns_dir "$1")"
	log "---- tail of $d/server.out"
	tail -n 20 "$d/server.out" >&2 2>/dev/null || true
	log "---- tail of $d/log/$(netns_node_name "$1").log"
	tail -n 40 "$d/log/$(netns_node_name "$1").log" >&2 2>/dev/null || true
}

declare -A NETNS_LAUNCH_PID=()
netns_launch() {
	local n="$1" mode="$2" d
	d="$(netns_dir "$n")"
	netns_write_conf "$n" "$mode"
	log "starting rabbitmq node $(netns_node_name "$n") in namespace $(netns_name "$n") ($mode; log: $d/log/)"
	netns_env "$n"
	(
		cd /
		exec ip netns exec "$(netns_name "$n")" setsid runuser -u rabbitmq -- env "${RMQ_ENV[@]}" "$RMQ_BIN/rabbitmq-server"
	) </dev/null >>"$d/server.out" 2>&1 9>&- &
	NETNS_LAUNCH_PID[$n]=$!
	disown "$!" 2>/dev/null || true
}

netns_wait_up() {
	local n="$1" deadline="$2" mode="$3" pid relaunches=0
	pid="${NETNS_LAUNCH_PID[$n]:-}"
	until netns_mgmt_ok "$n" && nsrmq "$n" rabbitmq-diagnostics -q check_running --timeout 5 >/dev/null 2>&1; do
		if [ -n "$pid" ] && ! alive "$pid" && [ -z "$(netns_server_pids "$n")" ]; then
			# RabbitMQ 3.10 sometimes aborts a boot while syncing feature
			# flags with a peer that is still starting; a second boot works.
			[ "$relaunches" -lt 2 ] || { netns_log_tail "$n"; die "$(netns_node_name "$n") exited during startup"; }
			relaunches=$((relaunches + 1))
			log "$(netns_node_name "$n") exited during startup; starting it again (retry $relaunches of 2)"
			netns_launch "$n" "$mode"
			pid="${NETNS_LAUNCH_PID[$n]:-}"
		fi
		[ "$SECONDS" -lt "$deadline" ] || { netns_log_tail "$n"; die "$(netns_node_name "$n") not running after ${NETNS_START_TIMEOUT}s"; }
		sleep 1
	done
}

netns_node_stop() {
	local n="$1" pids i
	pids="$(netns_server_pids "$n")"
	[ -n "$pids" ] || return 0
	log "stopping rabbitmq node $(netns_node_name "$n")"
	nsrmq "$n" rabbitmqctl -q shutdown --timeout 60 >&2 9>&- || true
	for ((i = 0; i < 150; i++)); do
		[ -z "$(netns_server_pids "$n")" ] && return 0
		sleep 0.2
	done
	pids="$(netns_server_pids "$n")"
	# shellcheck disable=SC2086
	[ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
}

# netns_status_json N: node N's cluster_status as JSON ("" if it does not answer)
netns_status_json() { nsrmq "$1" rabbitmqctl -q cluster_status --formatter json --timeout 10 2>/dev/null || true; }

json_list() { # json_list KEY < json: the string list under KEY, one per line
	sed -n "s/.*\"$1\":\[\([^]]*\)\].*/\1/p" | tr ',' '\n' | tr -d '" ' | grep -v '^$' || true
}

# netns_nodes_json N: /api/nodes as node N's management API sees it
netns_nodes_json() {
	curl -fsS --max-time 5 -u "$SVC_USER:$SVC_PASS" \
		"http://$(netns_ip "$1"):15672/api/nodes?columns=name,running,partitions" 2>/dev/null |
		sed 's/},{/}\n{/g' || true
}

# netns_partitions N: the peers node N itself reports a partition with.
netns_partitions() {
	netns_nodes_json "$1" | grep "\"name\":\"$(netns_node_name "$1")\"" |
		sed -n 's/.*"partitions":\[\([^]]*\)\].*/\1/p' | tr ',' '\n' | tr -d '" ' | grep -v '^$' || true
}

netns_running_count() { netns_nodes_json "$1" | grep -c '"running":true' || true; }

# netns_settled: every node runs, sees three running nodes and no partition.
netns_settled() {
	local n
	for n in "${NETNS_NODES[@]}"; do
		netns_mgmt_ok "$n" || return 1
		[ "$(netns_running_count "$n")" = 3 ] || return 1
		[ -z "$(netns_partitions "$n")" ] || return 1
	done
}

netns_join() {
	local n="$1" seed out
	seed="$(netns_node_name 1)"
	if netns_status_json 1 | json_list disk_nodes | grep -qx "$(netns_node_name "$n")" &&
		netns_status_json "$n" | json_list disk_nodes | grep -qx "$seed"; then
		return 0
	fi
	log "joining $(netns_node_name "$n") to $seed"
	out="$(netns_dir "$n")/join.out"
	{
		nsrmq "$n" rabbitmqctl -q stop_app &&
			{ nsrmq "$n" rabbitmqctl -q reset || nsrmq "$n" rabbitmqctl -q force_reset; } &&
			nsrmq "$n" rabbitmqctl -q join_cluster "$seed" &&
			nsrmq "$n" rabbitmqctl -q start_app
	} >"$out" 2>&1 || {
		cat "$out" >&2
		nsrmq "$n" rabbitmqctl -q start_app >&2 || true
		die "could not join $(netns_node_name "$n") to $seed"
	}
}

netns_stop_all() {
	local n p pids=()
	for n in 3 2; do
		netns_node_stop "$n" &
		pids+=("$!")
	done
	for p in "${pids[@]}"; do wait "$p" || true; done
	netns_node_stop 1
}

# ---- commands

cmd_netns_up() {
	local mode="${1:-ignore}"
	case "$mode" in ignore | pause_minority) ;; *) die "partition handling must be ignore or pause_minority, not '$mode'" ;; esac
	netns_require netns-up
	take_lock
	ensure_packages
	resolve_netns_dirs create
	netns_net_up
	netns_heal_routes
	local current n deadline=$((SECONDS + NETNS_START_TIMEOUT))
	current="$(cat "$(netns_mode_file)" 2>/dev/null || true)"
	if [ "$current" = "$mode" ] && netns_settled; then
		log "namespaced rabbitmq cluster already running (3 nodes, $mode)"
		print_netns_env
		return 0
	fi
	if [ -n "$current" ] && [ "$current" != "$mode" ]; then
		log "partition handling changes from $current to $mode: restarting the nodes"
		netns_stop_all
	fi
	echo "$mode" >"$(netns_mode_file)"
	for n in "${NETNS_NODES[@]}"; do
		[ -n "$(netns_server_pids "$n")" ] || netns_launch "$n" "$mode"
	done
	for n in "${NETNS_NODES[@]}"; do netns_wait_up "$n" "$deadline" "$mode"; done
	for n in 2 3; do netns_join "$n"; done
	netns_wait_settled "$deadline"
	log "namespaced rabbitmq cluster ready ($mode): $(netns_status_json 1 | json_list running_nodes | tr '\n' ' ')"
	print_netns_env
}

# netns_wait_settled DEADLINE: wait until every node sees three running nodes
# and no partition. Under `ignore` RabbitMQ never heals a partition by itself
# (the operator restarts the losing side): once the nodes' view of the
# partitions has held for 3 s (and at least 20 s under pause_minority,
# which resumes paused nodes by itself; 10 s after a restart, while the
# restarted nodes rejoin), restart the rabbit application of the losing
# side (netns_losers), those nodes at once: after a flapping partition
# every node may report one, and restarting them one by one took a minute.
# At least one node always stays up.
netns_wait_settled() {
	local deadline="$1" since=$SECONDS n wait=20 view last= stable=$SECONDS losers
	[ "$(cat "$(netns_mode_file)" 2>/dev/null)" != ignore ] || wait=2
	until netns_settled; do
		[ "$SECONDS" -lt "$deadline" ] || die "cluster not settled: $(netns_status_lines | tr '\n' ';')"
		# Nodes learn of a healed partition one by one: act on a view of
		# the partitions that has held for 3 s, not on a half-formed one.
		view=
		for n in "${NETNS_NODES[@]}"; do
			view+="$n:$(netns_partitions "$n" | sort | tr '\n' ' ');"
		done
		[ "$view" = "$last" ] || { last="$view" stable=$SECONDS; }
		if [ $((SECONDS - since)) -ge "$wait" ] && [ $((SECONDS - stable)) -ge 3 ]; then
			losers="$(netns_losers)"
			if [ -n "$losers" ]; then
				for n in $losers; do
					log "$(netns_node_name "$n") still reports a partition with $(netns_partitions "$n" | tr '\n' ' '); restarting its rabbit application"
					{ nsrmq "$n" rabbitmqctl -q stop_app >&2 || true; nsrmq "$n" rabbitmqctl -q start_app >&2 || true; } &
				done
				wait
				since=$SECONDS wait=10
			fi
		fi
		sleep 1
	done
}

# netns_losers: the nodes to restart, one per line: the node partitioned
# from the most peers, then, of the rest, the one partitioned from the
# most nodes not yet chosen, and so on while two nodes left see a
# partition between them. A partition counts whichever of the two
# reports it: nodes learn of a healed partition one by one. A tie goes to
# the node others report: when only a node of the majority has spoken yet
# ("3 reports 1"), the node it names is the one that was cut off
# (restarting node 3 there cost two more rounds, 55 s in all). So each
# peer counts 3, or 4 when it reports the partition itself. One node cut
# off from two gives just itself; a cluster where every node saw the
# others as partitioned gives two of the three.
netns_losers() {
	local n m c e best pick chosen=" "
	local -A peers=()
	for n in "${NETNS_NODES[@]}"; do peers[$n]=" $(netns_partitions "$n" | tr '\n' ' ') "; done
	while :; do
		best=0 pick=
		for n in "${NETNS_NODES[@]}"; do
			[[ "$chosen" == *" $n "* ]] && continue
			c=0
			for m in "${NETNS_NODES[@]}"; do
				[[ "$chosen" == *" $m "* ]] && continue
				e=0
				[[ "${peers[$n]}" == *" $(netns_node_name "$m") "* ]] && e=3
				[[ "${peers[$m]}" == *" $(netns_node_name "$n") "* ]] && e=4
				c=$((c + e))
			done
			if [ "$c" -gt "$best" ]; then best="$c" pick="$n"; fi
		done
		[ -n "$pick" ] || break
		chosen+="$pick "
		echo "$pick"
	done
}

cmd_netns_down() {
	netns_require netns-down
	take_lock
	RMQ_BIN="$(find_rmq_bin)"
	resolve_netns_dirs
	if [ -n "$RMQ_BIN" ]; then netns_stop_all; fi
	netns_net_down
	log "namespaced rabbitmq cluster stopped, namespaces removed"
}

cmd_netns_clean() {
	cmd_netns_down
	local target
	if [ -L "$STATE/rabbitmq-netns" ]; then
		target="$(readlink -f "$STATE/rabbitmq-netns" || true)"
		[ -z "$target" ] || rm -rf "$target"
		rm -f "$STATE/rabbitmq-netns"
	else
		rm -rf "${STATE:?}/rabbitmq-netns"
	fi
	log "namespaced rabbitmq cluster state removed"
}

cmd_netns_isolate() {
	local n m
	n="$(parse_netns_node "${1:-}")"
	netns_require netns-isolate
	netns_exists "$n" || die "no namespace $(netns_name "$n"): run netns-up first"
	for m in "${NETNS_NODES[@]}"; do
		[ "$m" = "$n" ] && continue
		netns_block "$n" "$m"
		netns_block "$m" "$n"
	done
	log "$(netns_node_name "$n") cut off from its peers (its clients still reach it)"
}

cmd_netns_bridge() {
	local a b
	a="$(parse_netns_node "${1:-}")"
	b="$(parse_netns_node "${2:-}")"
	[ "$a" != "$b" ] || die "a bridge needs two different nodes"
	netns_require netns-bridge
	netns_block "$a" "$b"
	netns_block "$b" "$a"
	log "$(netns_node_name "$a") and $(netns_node_name "$b") cannot see each other; the third node sees both"
}

cmd_netns_heal() {
	netns_require netns-heal
	netns_heal_routes
	log "all partitions removed"
	if [ "${1:-}" = --wait ]; then
		take_lock
		RMQ_BIN="$(find_rmq_bin)"
		resolve_netns_dirs
		netns_wait_settled $((SECONDS + NETNS_START_TIMEOUT))
		log "cluster settled: 3 running nodes, no partition"
	fi
}

# cmd_netns_leader QUEUE: the number (1..3) of the node leading the quorum
# queue QUEUE in vhost /, asked of the first node that answers.
cmd_netns_leader() {
	local q="${1:-}" n json leader
	[ -n "$q" ] || die "usage: netns-leader QUEUE"
	for n in "${NETNS_NODES[@]}"; do
		json="$(curl -fsS --max-time 5 -u "$SVC_USER:$SVC_PASS" "http://$(netns_ip "$n"):15672/api/queues/%2F/$q?columns=leader" 2>/dev/null)" || continue
		leader="$(sed -n 's/.*"leader":"rabbit@[0-9.]*\.\([0-9]*\)".*/\1/p' <<<"$json")"
		[ -n "$leader" ] && { echo "$leader"; return 0; }
	done
	die "no node reports a leader for queue $q"
}

netns_status_lines() {
	local n
	for n in "${NETNS_NODES[@]}"; do
		if ! netns_exists "$n"; then
			echo "netns node $n: no namespace"
		elif netns_mgmt_ok "$n"; then
			echo "netns node $(netns_node_name "$n"): running; sees $(netns_running_count "$n") running nodes; partitioned from: $(netns_partitions "$n" | tr '\n' ' ')"
		elif [ -n "$(netns_server_pids "$n")" ]; then
			echo "netns node $(netns_node_name "$n"): process up, management not answering"
		else
			echo "netns node $(netns_node_name "$n"): not running"
		fi
	done
	echo "netns blocks: $(netns_blocks | tr '\n' ',' | sed 's/,$//')"
}

cmd_netns_status() {
	netns_require netns-status
	RMQ_BIN="$(find_rmq_bin)"
	resolve_netns_dirs
	echo "partition handling: $(cat "$(netns_mode_file)" 2>/dev/null || echo none)"
	netns_status_lines
}
