package testenv

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/migrations"
)

// PGPair is a PostgreSQL primary and its streaming standby
// (scripts/services.sh pg-pair-up), for failover tests.
type PGPair struct {
	t testing.TB
	// URL names both nodes with target_session_attrs=read-write: pgx
	// connects to whichever accepts writes.
	URL string
	// PrimaryURL and StandbyURL reach one node each (no fallback).
	PrimaryURL, StandbyURL string
	// Mode is "sync" or "async": whether a commit on the primary waits
	// for the standby to have flushed it.
	Mode string
}

// StartPGPair builds (or reuses) a running pair in mode ("sync" or
// "async") and stops it when the test ends. The pair shares the
// checkout's slot with the single services, which it starts if needed.
// A machine that cannot run the pair fails the test.
func StartPGPair(t testing.TB, mode string) *PGPair {
	t.Helper()
	Services(t) // claims the slot and installs nothing
	out := ServicesCmd(t, "pg-pair-up", mode)
	p := &PGPair{t: t}
	vars := map[string]*string{
		"RELAY_TEST_PGPAIR_URL":         &p.URL,
		"RELAY_TEST_PGPAIR_PRIMARY_URL": &p.PrimaryURL,
		"RELAY_TEST_PGPAIR_STANDBY_URL": &p.StandbyURL,
		"RELAY_TEST_PGPAIR_MODE":        &p.Mode,
	}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && vars[k] != nil {
			*vars[k] = v
		}
	}
	if p.URL == "" || p.Mode != mode {
		t.Fatalf("pg-pair-up %s printed no pair of that mode:\n%s", mode, out)
	}
	t.Cleanup(func() { ServicesCmd(t, "pg-pair-down") })
	return p
}

// NewSchema creates a migrated schema on the primary (the standby gets it
// by replication) and returns the pair's multi-host URL pinned to it.
func (p *PGPair) NewSchema() string {
	p.t.Helper()
	schema := Name("t")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.URL)
	if err != nil {
		p.t.Fatalf("connect to the pair: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		p.t.Fatalf("create schema: %v", err)
	}
	dsn := p.URL + "&search_path=" + schema
	if _, err := migrations.Up(ctx, dsn); err != nil {
		p.t.Fatalf("migrate: %v", err)
	}
	return dsn
}

// StopPrimary stops the primary, "immediate" (a crash: no shutdown
// checkpoint, sessions cut) or "fast" (sessions terminated).
func (p *PGPair) StopPrimary(how string) { p.t.Helper(); ServicesCmd(p.t, "pg-pair-stop-primary", how) }

// Promote promotes the standby and returns once it accepts writes.
func (p *PGPair) Promote() { p.t.Helper(); ServicesCmd(p.t, "pg-pair-promote") }
