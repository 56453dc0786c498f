package cli

import (
	"crypto/tls"
	"log/slog"
	"net"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	amqp "github.com/rabbitmq/amqp091-go"
)

// warnUnverified logs one warning per side whose connections to a host
// off this machine can be read or impersonated on the way: a database
// connection that does not verify the server's certificate (sslmode
// disable, allow, prefer, require without sslrootcert, or unset, which
// means prefer), and a broker URL that is plain amqp://. Loopback hosts
// and unix sockets never leave the machine, so they are not named.
func warnUnverified(log *slog.Logger, pool *pgconn.Config, listenURL string, amqpURLs []string) {
	db := []*pgconn.Config{pool}
	if listenURL != "" {
		// Errors are the relay's to report, naming listen_url.
		if c, err := pgconn.ParseConfig(listenURL); err == nil {
			db = append(db, c)
		}
	}
	warnUnverifiedConfigs(log, db, amqpURLs)
}

func warnUnverifiedConfigs(log *slog.Logger, db []*pgconn.Config, amqpURLs []string) {
	var dbHosts []string
	for _, c := range db {
		dbHosts = append(dbHosts, unverifiedDatabaseHosts(c)...)
	}
	if len(dbHosts) > 0 {
		log.Warn("database connections do not verify the server's certificate: set sslmode=verify-full and sslrootcert in database_url",
			"hosts", strings.Join(dbHosts, ","))
	}
	if hosts := plainAMQPHosts(amqpURLs); len(hosts) > 0 {
		log.Warn("broker connections are not encrypted: use amqps:// (with cacertfile, certfile, keyfile) in amqp_url",
			"hosts", strings.Join(hosts, ","))
	}
}

// unverifiedDatabaseHosts lists the non-loopback hosts (host:port) among
// c's host and its fallbacks that pgx would reach without verifying the
// certificate. pgx turns sslmode into one tls.Config per attempt: nil for
// a plain attempt (disable, and the fallbacks of allow and prefer),
// InsecureSkipVerify alone for an unverified one; verify-ca (and require
// with sslrootcert) check the chain in VerifyPeerCertificate, verify-full
// does the standard check with the host name.
func unverifiedDatabaseHosts(c *pgconn.Config) []string {
	if c == nil {
		return nil
	}
	attempts := append([]*pgconn.FallbackConfig{{Host: c.Host, Port: c.Port, TLSConfig: c.TLSConfig}}, c.Fallbacks...)
	var hosts []string
	seen := map[string]bool{}
	for _, a := range attempts {
		addr := net.JoinHostPort(a.Host, strconv.Itoa(int(a.Port)))
		if loopback(a.Host) || verifiesServer(a.TLSConfig) || seen[addr] {
			continue
		}
		seen[addr] = true
		hosts = append(hosts, addr)
	}
	return hosts
}

func verifiesServer(c *tls.Config) bool {
	return c != nil && (!c.InsecureSkipVerify || c.VerifyPeerCertificate != nil)
}

// plainAMQPHosts lists the non-loopback hosts of the amqp:// URLs. An
// amqps:// URL always verifies the server (amqp091-go has no URL
// parameter to skip it). URLs that do not parse are left to the relay,
// which refuses them with the key's name.
func plainAMQPHosts(urls []string) []string {
	var hosts []string
	for _, u := range urls {
		uri, err := amqp.ParseURI(u)
		if err != nil || uri.Scheme != "amqp" || loopback(uri.Host) {
			continue
		}
		hosts = append(hosts, net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port)))
	}
	return hosts
}

// loopback: a unix socket directory, localhost, or a loopback address.
func loopback(host string) bool {
	if strings.HasPrefix(host, "/") || strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}
