package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
)

// slot is this checkout's own services, as processes: the machine may run
// other checkouts' PostgreSQL and RabbitMQ at the same time, and counting
// their CPU (every process named postgres or beam.smp) would charge this
// benchmark with their tests' work.
type slot struct {
	postmaster int // the PostgreSQL server; its children are the backends and workers
	broker     int // the RabbitMQ node's beam.smp
}

var (
	slotOnce sync.Once
	theSlot  slot
)

// services finds this checkout's PostgreSQL (the parent of a backend of
// pool) and RabbitMQ node (its os_pid, from the management API). Where
// either cannot be found it stays 0, and its CPU is read, as before, over
// every process of that name.
func services(b *testing.B, pool *pgxpool.Pool) slot {
	slotOnce.Do(func() {
		var backend int
		if err := pool.QueryRow(context.Background(), `SELECT pg_backend_pid()`).Scan(&backend); err == nil {
			theSlot.postmaster = parentPid(backend)
		}
		theSlot.broker = brokerPid(testenv.Services(b).ManagementURL)
	})
	return theSlot
}

// pgCPU is the CPU seconds of the slot's PostgreSQL: the postmaster and its
// children (backends, walwriter, checkpointer, autovacuum). A backend that
// exits takes its time with it: read around phases where the relays'
// connections stay open.
func (s slot) pgCPU() float64 { return s.pgCPUOf(s.pgCPUParts()) }

// pgCPUOf is pgCPU from a reading of pgCPUParts, so that one scan of
// /proc gives both.
func (s slot) pgCPUOf(parts map[string]float64) float64 {
	if s.postmaster == 0 {
		return cpuOf("postgres")
	}
	var sum float64
	for _, v := range parts {
		sum += v
	}
	return sum
}

// pgCPUParts splits pgCPU by the kind of process, from its title:
// "backends" (client connections: the relays' and the bench's), each
// background process by name ("autovacuum launcher", "walwriter",
// "checkpointer", ...), and "reaped": processes that exited since the
// server started, whose time the postmaster holds in its children's time
// (autovacuum workers, which exit after each table, and closed
// connections). The postmaster's own time is "postmaster".
func (s slot) pgCPUParts() map[string]float64 {
	if s.postmaster == 0 {
		return nil // not found: pgCPU reads every postgres process
	}
	parts := map[string]float64{
		"postmaster": procCPU(s.postmaster),
		"reaped":     reapedCPU(s.postmaster),
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err == nil && parentPid(pid) == s.postmaster {
			parts[pgProcessKind(pid)] += procCPU(pid)
		}
	}
	return parts
}

// pgProcessKind names a PostgreSQL child by its title ("postgres:
// walwriter", "postgres: autovacuum worker", "postgres: outbox outbox
// 127.0.0.1(5432) idle"): a background process by its name, any other as
// a backend.
func pgProcessKind(pid int) string {
	data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	title := strings.TrimPrefix(strings.TrimRight(string(data), "\x00"), "postgres: ")
	for _, bg := range []string{"autovacuum worker", "autovacuum launcher", "walwriter", "checkpointer",
		"background writer", "logical replication launcher", "archiver", "stats collector"} {
		if strings.HasPrefix(title, bg) {
			return bg
		}
	}
	return "backends"
}

// cpuDelta is after - before per part, in µs per message of n, the
// parts that took less than 0.05 µs left out.
func cpuDelta(before, after map[string]float64, n int) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if d := (v - before[k]) * 1e6 / float64(n); d >= 0.05 {
			out[k] = d
		}
	}
	return out
}

// fmtParts prints parts largest first: "backends 20.1, reaped 2.0".
func fmtParts(parts map[string]float64) string {
	keys := make([]string, 0, len(parts))
	for k := range parts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(parts[b], parts[a]) })
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = fmt.Sprintf("%s %.1f", k, parts[k])
	}
	return strings.Join(out, ", ")
}

// mqCPU is the CPU seconds of the slot's RabbitMQ node.
func (s slot) mqCPU() float64 {
	if s.broker == 0 {
		return cpuOf("beam.smp")
	}
	return procCPU(s.broker)
}

// parentPid is a process's parent (field 4 of /proc/<pid>/stat), 0 if gone.
func parentPid(pid int) int {
	fields := statFields(pid)
	if len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// brokerPid asks the management API for the node's operating-system pid.
func brokerPid(mgmtURL string) int {
	if mgmtURL == "" {
		return 0
	}
	resp, err := http.Get(strings.TrimSuffix(mgmtURL, "/") + "/api/nodes?columns=os_pid")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var nodes []struct {
		OSPid string `json:"os_pid"`
	}
	if json.NewDecoder(resp.Body).Decode(&nodes) != nil || len(nodes) != 1 {
		return 0
	}
	pid, _ := strconv.Atoi(nodes[0].OSPid)
	return pid
}

// walLSN is the database's current WAL position, in bytes: the difference
// of two readings is the WAL written between them (by everything on the
// server, which in a benchmark is the relays and the benchmark itself).
func walLSN(b *testing.B, pool *pgxpool.Pool) float64 {
	var lsn float64
	if err := pool.QueryRow(context.Background(),
		`SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8`).Scan(&lsn); err != nil {
		b.Fatal(err)
	}
	return lsn
}
