# shellcheck shell=bash
# Sourced by scripts/services.sh: the local single RabbitMQ node.

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

# rmq_write_node_files DIR MGMT_PORT [MGMT_IP]: write a node's rabbitmq.conf,
# whose listeners the caller passes on stdin, and its other files; shared by
# the single node and the clusters' nodes. MGMT_IP defaults to 127.0.0.1 (the
# namespaced nodes listen on their own address).
rmq_write_node_files() {
	local d="$1" mgmt_port="$2" mgmt_ip="${3:-127.0.0.1}"
	{
		echo "# Managed by scripts/services.sh; rewritten on every start."
		cat
		cat <<EOF
management.tcp.ip = $mgmt_ip
management.tcp.port = $mgmt_port
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
	} >"$d/rabbitmq.conf"
	echo '[rabbitmq_management].' >"$d/enabled_plugins"
	echo '[].' >"$d/advanced.config"
	echo '# intentionally empty: all settings come from scripts/services.sh' >"$d/rabbitmq-env.conf"
	chown rabbitmq:rabbitmq "$d/rabbitmq.conf" "$d/enabled_plugins" "$d/advanced.config" "$d/rabbitmq-env.conf"
}

rmq_write_conf() {
	tls_ensure
	tls_install "$RMQ_DIR/tls" rabbitmq
	rmq_write_node_files "$RMQ_DIR" "$MGMT_PORT" <<EOF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
# TLS: the server certificate from the test CA; clients must present one.
listeners.ssl.default = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $RMQ_DIR/tls/ca.pem
ssl_options.certfile = $RMQ_DIR/tls/server.pem
ssl_options.keyfile = $RMQ_DIR/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
EOF
}

rmq_log_tail() {
	log "---- tail of $RMQ_DIR/server.out"
	tail -n 30 "$RMQ_DIR/server.out" >&2 2>/dev/null || true
	log "---- tail of $RMQ_DIR/log/$RMQ_NODE.log"
	tail -n 60 "$RMQ_DIR/log/$RMQ_NODE.log" >&2 2>/dev/null || true
}

rmq_start_local() {
	if mgmt_ok && amqps_ok; then
		log "rabbitmq already answering on 127.0.0.1:$MGMT_PORT"
		return 0
	fi
	if mgmt_ok; then
		# Started before TLS existed (or with other certificates): a
		# listener is only added by a restart.
		log "rabbitmq: no TLS listener with this checkout's certificates on 127.0.0.1:$AMQPS_PORT; restarting the node"
		rmq_stop_local
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
