# shellcheck shell=bash
# Sourced by scripts/services.sh: Debian packages (installed by `make up`, never from a test).

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
	command -v ip >/dev/null 2>&1 || want+=(iproute2) # the partition suite's network namespaces
	command -v openssl >/dev/null 2>&1 || want+=(openssl) # the test certificates
	# The pooler tests run their own pgbouncer processes.
	command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || want+=(pgbouncer)
	# go test ./deploy checks the systemd units with systemd-analyze verify.
	command -v systemd-analyze >/dev/null 2>&1 || want+=(systemd)
	# The console's browser tests and make screenshots drive headless Chromium.
	command -v chromium >/dev/null 2>&1 || want+=(chromium)
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

# ---------------------------------------------------------------- sample clients

# The README's Python and Node insert samples (test/readme_e2e_test.go)
# run with Debian's python3-psycopg2 and the `pg` npm package, installed
# into .services/node of the checkout. Tests install nothing: they say
# to run `make up` when a client is missing.
ensure_sample_clients() {
	[ -z "${SERVICES_NO_INSTALL:-}" ] || return 0
	if [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c 'import psycopg2' 2>/dev/null; then
		apt_install python3-psycopg2
	fi
	if command -v npm >/dev/null 2>&1 && [ ! -f "$STATE/node/node_modules/pg/package.json" ]; then
		mkdir -p "$STATE/node"
		log "npm install pg (into .services/node)"
		npm install --prefix "$STATE/node" --no-audit --no-fund --loglevel=error pg@8 >&2 ||
			die "npm install pg failed"
	fi
}
