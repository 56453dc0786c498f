# shellcheck shell=bash
# Sourced by scripts/services.sh: the local PostgreSQL server.

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
	tls_ensure
	tls_install "$PG_DIR/tls" postgres
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
# TLS for clients that ask (sslmode=verify-full); plain connections work too.
ssl = on
ssl_cert_file = '$PG_DIR/tls/server.pem'
ssl_key_file = '$PG_DIR/tls/server.key'
ssl_ca_file = '$PG_DIR/tls/ca.pem'
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

# pg_tls_reload: a server of ours that is already running takes the TLS
# settings and certificates with a reload (no restart, no dropped
# connections).
pg_tls_reload() {
	if ! pg_local_running; then
		log "postgres already answering on 127.0.0.1:$PG_PORT (not started from this checkout: TLS left as it is)"
		return 0
	fi
	pg_tls_ok && return 0
	log "postgres: turning TLS on (reload)"
	pg_write_conf
	as_user postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" reload >&2 9>&-
	local i
	for ((i = 0; i < 50; i++)); do
		pg_tls_ok && return 0
		sleep 0.2
	done
	tail -n 20 "$PG_DIR/log" >&2 || true
	die "postgres does not answer TLS after a reload"
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
