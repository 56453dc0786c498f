# shellcheck shell=bash
# Sourced by scripts/services.sh: a PostgreSQL primary and its streaming
# standby, for the failover tests (promote the standby, stop the primary).
#
# The pair is separate from the checkout's single PostgreSQL: its own data
# directories ($STATE/pgpair/primary and .../standby, beside $STATE/pg), its
# own ports (the slot's PG_PORT + 6 for the primary, + 7 for the standby),
# the same role, password and database as the single server. The standby is
# a pg_basebackup -R of the primary. In "sync" mode the primary has
# synchronous_standby_names = '*' (with synchronous_commit = on, a commit
# returns once the standby has flushed its WAL); in "async" mode it has none.
# The standby's own settings never name a synchronous standby: once
# promoted it is a primary alone, and must not wait for a standby it does
# not have.

PGPAIR_DIR=
pgpair_vars() {
	PGPAIR_PRIMARY_PORT=$((PG_PORT + 6))
	PGPAIR_STANDBY_PORT=$((PG_PORT + 7))
	PGPAIR_DIR="$(dirname "$PG_DIR")/pgpair"
}

# pgpair_url: the multi-host URL the relay and writers use: pgx tries the
# hosts in turn and keeps the first that accepts read-write sessions.
pgpair_url() {
	printf 'postgres://%s:%s@127.0.0.1:%s,127.0.0.1:%s/%s?sslmode=disable&target_session_attrs=read-write' \
		"$SVC_USER" "$SVC_PASS" "$PGPAIR_PRIMARY_PORT" "$PGPAIR_STANDBY_PORT" "$SVC_DB"
}

pgpair_node_url() {
	printf 'postgres://%s:%s@127.0.0.1:%s/%s?sslmode=disable' "$SVC_USER" "$SVC_PASS" "$1" "$SVC_DB"
}

pgpair_env() {
	printf 'RELAY_TEST_PGPAIR_URL=%s\n' "$(pgpair_url)"
	printf 'RELAY_TEST_PGPAIR_PRIMARY_URL=%s\n' "$(pgpair_node_url "$PGPAIR_PRIMARY_PORT")"
	printf 'RELAY_TEST_PGPAIR_STANDBY_URL=%s\n' "$(pgpair_node_url "$PGPAIR_STANDBY_PORT")"
	printf 'RELAY_TEST_PGPAIR_MODE=%s\n' "$(cat "$PGPAIR_DIR/mode" 2>/dev/null || true)"
}

pgpair_running() { # NAME
	[ -f "$PGPAIR_DIR/$1/PG_VERSION" ] &&
		as_user postgres "$PG_BIN/pg_ctl" -D "$PGPAIR_DIR/$1" status >/dev/null 2>&1
}

pgpair_psql() { # PORT SQL: one value, over the node's socket as postgres
	as_user postgres psql -X -q -At -v ON_ERROR_STOP=1 -h "$PGPAIR_DIR/run" -p "$1" -U postgres -d postgres -c "$2"
}

# pgpair_write_conf NAME PORT SYNC_NAMES
pgpair_write_conf() {
	local conf="$PGPAIR_DIR/$1/outboxrelay.conf"
	cat >"$conf" <<EOF
# Managed by scripts/services.sh (pgpair); rewritten on every start.
listen_addresses = '127.0.0.1'
port = $2
unix_socket_directories = '$PGPAIR_DIR/run'
max_connections = 200
shared_buffers = 64MB
fsync = on
full_page_writes = on
synchronous_commit = on
synchronous_standby_names = '$3'
wal_level = replica
max_wal_senders = 5
hot_standby = on
cluster_name = 'pgpair_$1'
log_destination = 'stderr'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
timezone = 'UTC'
EOF
	chown postgres:postgres "$conf"
	grep -q "^include_if_exists = 'outboxrelay.conf'" "$PGPAIR_DIR/$1/postgresql.conf" ||
		echo "include_if_exists = 'outboxrelay.conf'" >>"$PGPAIR_DIR/$1/postgresql.conf"
}

pgpair_start_node() { # NAME
	if pgpair_running "$1"; then return 0; fi
	if ! as_user postgres "$PG_BIN/pg_ctl" -D "$PGPAIR_DIR/$1" -l "$PGPAIR_DIR/$1.log" -w -t "$START_TIMEOUT" \
		start </dev/null >&2 9>&-; then
		tail -n 40 "$PGPAIR_DIR/$1.log" >&2 || true
		die "pgpair: $1 did not start"
	fi
}

# pgpair_stop_node NAME MODE (fast|immediate)
pgpair_stop_node() {
	pgpair_running "$1" || return 0
	as_user postgres "$PG_BIN/pg_ctl" -D "$PGPAIR_DIR/$1" -m "$2" -w -t 60 stop >&2 9>&-
}

# pgpair_healthy MODE: both nodes run, the primary is not in recovery, the
# standby is streaming from it, and the pair was built in MODE.
pgpair_healthy() {
	[ "$(cat "$PGPAIR_DIR/mode" 2>/dev/null)" = "$1" ] || return 1
	pgpair_running primary && pgpair_running standby || return 1
	[ "$(pgpair_psql "$PGPAIR_PRIMARY_PORT" 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] || return 1
	[ "$(pgpair_psql "$PGPAIR_STANDBY_PORT" 'SELECT pg_is_in_recovery()' 2>/dev/null)" = t ] || return 1
	pgpair_streaming "$1"
}

# pgpair_streaming MODE: the primary sees the standby streaming (and, in
# sync mode, as its synchronous standby).
pgpair_streaming() {
	local want="state = 'streaming'"
	[ "$1" != sync ] || want="$want AND sync_state = 'sync'"
	[ "$(pgpair_psql "$PGPAIR_PRIMARY_PORT" "SELECT count(*) FROM pg_stat_replication WHERE $want" 2>/dev/null)" = 1 ]
}

pgpair_build() { # MODE
	local mode="$1" sync_names='' i
	[ "$mode" != sync ] || sync_names='*'
	log "pgpair: building a $mode primary (127.0.0.1:$PGPAIR_PRIMARY_PORT) and standby (127.0.0.1:$PGPAIR_STANDBY_PORT) in $PGPAIR_DIR"
	pgpair_stop_node standby immediate
	pgpair_stop_node primary immediate
	rm -rf "$PGPAIR_DIR"
	mkdir -p "$PGPAIR_DIR/run"
	chown -R postgres:postgres "$PGPAIR_DIR"
	chmod 700 "$PGPAIR_DIR"
	as_user postgres "$PG_BIN/initdb" -D "$PGPAIR_DIR/primary" -U postgres --encoding=UTF8 --locale=C \
		--auth-local=trust --auth-host=scram-sha-256 >"$PGPAIR_DIR/initdb.log" 2>&1 ||
		{ cat "$PGPAIR_DIR/initdb.log" >&2; die "pgpair: initdb failed"; }
	# Asynchronous until the standby streams: a synchronous primary
	# without its standby would hang on the provisioning commit.
	pgpair_write_conf primary "$PGPAIR_PRIMARY_PORT" ''
	pgpair_start_node primary
	as_user postgres psql -X -q -v ON_ERROR_STOP=1 -h "$PGPAIR_DIR/run" -p "$PGPAIR_PRIMARY_PORT" -U postgres -d postgres >&2 <<EOF
CREATE ROLE $SVC_USER LOGIN SUPERUSER PASSWORD '$SVC_PASS';
CREATE DATABASE $SVC_DB OWNER $SVC_USER ENCODING 'UTF8' TEMPLATE template0;
EOF
	# The replication connection goes over the primary's unix socket,
	# which initdb's pg_hba.conf trusts (local replication all trust).
	as_user postgres "$PG_BIN/pg_basebackup" -h "$PGPAIR_DIR/run" -p "$PGPAIR_PRIMARY_PORT" -U postgres \
		-D "$PGPAIR_DIR/standby" -R -X stream -c fast >"$PGPAIR_DIR/basebackup.log" 2>&1 ||
		{ cat "$PGPAIR_DIR/basebackup.log" >&2; die "pgpair: pg_basebackup failed"; }
	pgpair_write_conf standby "$PGPAIR_STANDBY_PORT" ''
	pgpair_start_node standby
	for ((i = 0; i < START_TIMEOUT * 5; i++)); do
		pgpair_streaming async && break
		sleep 0.2
	done
	if [ "$mode" = sync ]; then
		pgpair_write_conf primary "$PGPAIR_PRIMARY_PORT" "$sync_names"
		as_user postgres "$PG_BIN/pg_ctl" -D "$PGPAIR_DIR/primary" reload >&2 9>&-
	fi
	echo "$mode" >"$PGPAIR_DIR/mode"
	for ((i = 0; i < START_TIMEOUT * 5; i++)); do
		pgpair_streaming "$mode" && return 0
		sleep 0.2
	done
	tail -n 20 "$PGPAIR_DIR/standby.log" >&2 || true
	die "pgpair: the standby is not streaming ($mode) after ${START_TIMEOUT}s"
}

pgpair_prepare() {
	[ "$(current_mode)" = local ] || die "the PostgreSQL pair runs in local mode only"
	ensure_packages
	resolve_dirs create
	pgpair_vars
	[ -x "$PG_BIN/pg_basebackup" ] || die "pgpair: $PG_BIN/pg_basebackup is missing"
}

cmd_pgpair_up() { # [sync|async]
	local mode="${1:-sync}"
	case "$mode" in sync | async) ;; *) die "pg-pair-up: mode must be sync or async, not '$mode'" ;; esac
	take_lock
	pgpair_prepare
	if pgpair_healthy "$mode"; then
		log "pgpair: $mode pair already running"
	else
		pgpair_build "$mode"
	fi
	pgpair_env
}

cmd_pgpair_promote() {
	take_lock
	pgpair_prepare
	pgpair_running standby || die "pgpair: the standby is not running"
	log "pgpair: promoting the standby (127.0.0.1:$PGPAIR_STANDBY_PORT)"
	# -w waits until the server has left recovery and accepts writes.
	as_user postgres "$PG_BIN/pg_ctl" -D "$PGPAIR_DIR/standby" -w -t "$START_TIMEOUT" promote >&2 9>&-
	[ "$(pgpair_psql "$PGPAIR_STANDBY_PORT" 'SELECT pg_is_in_recovery()')" = f ] ||
		die "pgpair: the standby is still in recovery after pg_ctl promote"
}

cmd_pgpair_stop_primary() { # fast|immediate
	local how="${1:-immediate}"
	case "$how" in fast | immediate) ;; *) die "pg-pair-stop-primary: fast or immediate, not '$how'" ;; esac
	take_lock
	pgpair_prepare
	log "pgpair: stopping the primary ($how)"
	pgpair_stop_node primary "$how"
}

cmd_pgpair_down() {
	take_lock
	PG_BIN="$(find_pg_bin)"
	[ -n "$PG_BIN" ] || return 0
	resolve_dirs
	pgpair_vars
	pgpair_stop_node standby fast
	pgpair_stop_node primary fast
	log "pgpair: stopped"
}

cmd_pgpair_clean() {
	cmd_pgpair_down
	rm -rf "${PGPAIR_DIR:?}"
	log "pgpair: state removed"
}

cmd_pgpair_env() {
	PG_BIN="$(find_pg_bin)"
	resolve_dirs
	pgpair_vars
	pgpair_env
}

pgpair_status_lines() {
	PG_BIN="$(find_pg_bin)"
	[ -n "$PG_BIN" ] || return 0
	pgpair_vars
	local n port
	for n in primary standby; do
		[ -f "$PGPAIR_DIR/$n/PG_VERSION" ] || continue
		port="$PGPAIR_PRIMARY_PORT"
		[ "$n" = primary ] || port="$PGPAIR_STANDBY_PORT"
		if pgpair_running "$n"; then
			echo "pgpair $n: running (127.0.0.1:$port, in recovery: $(pgpair_psql "$port" 'SELECT pg_is_in_recovery()' 2>/dev/null || echo '?'))"
		else
			echo "pgpair $n: not running"
		fi
	done
}
