# shellcheck shell=bash
# Sourced by scripts/services.sh: the test certificates and the TLS checks.

# ---------------------------------------------------------------- tls

# The checkout's own test CA signs a server certificate (localhost,
# 127.0.0.1) that PostgreSQL and the RabbitMQ TLS listener present, and a
# client certificate that RabbitMQ requires (verify_peer,
# fail_if_no_peer_cert). Everything lives in $STATE/tls; the servers get
# copies they own, since PostgreSQL refuses a key others can read.
TLS_DIR="$STATE/tls"
TLS_DAYS=3650

# tls_cert NAME CN SAN EKU: a key and a certificate signed by the CA.
tls_cert() {
	local name="$1" cn="$2" san="$3" eku="$4"
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "$TLS_DIR/$name.key" -out "$TLS_DIR/$name.csr" -subj "/CN=$cn" 2>/dev/null
	printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s' \
		"$eku" "${san:+subjectAltName=$san
}" >"$TLS_DIR/$name.ext"
	openssl x509 -req -in "$TLS_DIR/$name.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
		-CAcreateserial -days "$TLS_DAYS" -sha256 -extfile "$TLS_DIR/$name.ext" \
		-out "$TLS_DIR/$name.pem" 2>/dev/null
	rm -f "$TLS_DIR/$name.csr" "$TLS_DIR/$name.ext"
}

# tls_valid: every file is there and no certificate expires within a day.
tls_valid() {
	local f
	for f in ca.pem ca.key server.pem server.key client.pem client.key; do
		[ -s "$TLS_DIR/$f" ] || return 1
	done
	for f in ca server client; do
		openssl x509 -checkend 86400 -noout -in "$TLS_DIR/$f.pem" >/dev/null 2>&1 || return 1
	done
}

# tls_ensure: generate the CA and both certificates unless valid ones exist.
tls_ensure() {
	tls_valid && return 0
	command -v openssl >/dev/null 2>&1 || die "openssl is missing: run \`make up\` (it installs it)"
	log "generating the test CA and certificates in $TLS_DIR"
	rm -rf "$TLS_DIR"
	mkdir -p "$TLS_DIR"
	chmod 700 "$TLS_DIR"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$TLS_DAYS" -sha256 \
		-keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" -subj "/CN=outboxrelay test CA (slot $SLOT)" \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null ||
		die "openssl could not create the test CA"
	tls_cert server localhost "DNS:localhost,IP:127.0.0.1" serverAuth || die "openssl could not create the server certificate"
	tls_cert client "$SVC_USER" "" clientAuth || die "openssl could not create the client certificate"
	tls_valid || die "the generated certificates in $TLS_DIR do not check out"
}

# tls_install DIR USER: copy the server's files into DIR, owned by USER.
tls_install() {
	local dir="$1" user="$2"
	mkdir -p "$dir"
	cp "$TLS_DIR/ca.pem" "$TLS_DIR/server.pem" "$TLS_DIR/server.key" "$dir/"
	chown -R "$user:$user" "$dir"
	chmod 700 "$dir"
	chmod 600 "$dir/server.key"
}

# pg_tls_ok: PostgreSQL answers TLS with a certificate from our CA.
pg_tls_ok() {
	[ -s "$TLS_DIR/ca.pem" ] && command -v psql >/dev/null 2>&1 &&
		PGCONNECT_TIMEOUT=3 psql -X -q -A -t -c 'SELECT 1' "$DATABASE_TLS_URL" >/dev/null 2>&1
}

# amqps_ok: the RabbitMQ TLS listener presents a certificate from our CA
# for 127.0.0.1 and accepts our client certificate.
amqps_ok() {
	[ -s "$TLS_DIR/ca.pem" ] && port_open "$AMQPS_PORT" &&
		timeout 10 openssl s_client -connect "127.0.0.1:$AMQPS_PORT" -CAfile "$TLS_DIR/ca.pem" \
			-cert "$TLS_DIR/client.pem" -key "$TLS_DIR/client.key" \
			-verify_ip 127.0.0.1 -verify_return_error -brief </dev/null >/dev/null 2>&1
}

tls_ok() { pg_tls_ok && amqps_ok; }
