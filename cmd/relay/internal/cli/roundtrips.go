package cli

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// roundTrips counts the relay pool's database round trips: each statement
// (BEGIN and COMMIT included) and each pipelined pgx.Batch is one. It is
// the denominator behind "round trips per message" in the benchmark.
type roundTrips struct{ n prometheus.Counter }

func newRoundTrips(reg prometheus.Registerer) *roundTrips {
	c := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "outboxrelay", Subsystem: "relay", Name: "database_round_trips_total",
		Help: "Round trips on the relay's database pool: one per statement (BEGIN and COMMIT included) or pipelined batch.",
	})
	reg.MustRegister(c)
	return &roundTrips{n: c}
}

func (t *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	t.n.Inc()
	return ctx
}

func (*roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (t *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	t.n.Inc()
	return ctx
}

func (*roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

func (*roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}
