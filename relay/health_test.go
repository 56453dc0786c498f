package relay_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/internal/testenv"
	"github.com/outboxrelay/outboxrelay/relay"
)

// A relay the database refuses for good from
// the start (here: no tables) does not spin; after StartupGrace, Run
// returns the error, wrapping ErrPermanent and naming `relay migrate`.
func TestRunReturnsAPermanentErrorAtStart(t *testing.T) {
	t.Parallel()
	env := testenv.Services(t)
	pool := testenv.Pool(t, testenv.NewSchema(t, false)) // not migrated
	r, err := relay.New(pool, relay.Config{AMQPURLs: []string{env.AMQPURL}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	select {
	case err := <-done:
		if !errors.Is(err, relay.ErrPermanent) || !strings.Contains(err.Error(), "relay migrate") {
			t.Fatalf("Run = %v, want ErrPermanent naming relay migrate", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run still running a minute after the start on an unmigrated schema")
	}
}

// While running, a permanent error makes the
// relay not ready, with the reason, and a batch that succeeds again makes
// it ready.
func TestReadyReportsAPermanentErrorWhileRunning(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *relay.Config) { c.PollInterval = 10 * time.Millisecond })
	ctx := context.Background()
	r := b.relay
	testenv.Eventually(t, 30*time.Second, "ready", func() (bool, error) { return r.Ready(ctx) == nil, nil })
	if _, err := b.pool.Exec(ctx, `ALTER TABLE outbox RENAME TO outbox_away`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "not ready with the reason", func() (bool, error) {
		err := r.Ready(ctx)
		return errors.Is(err, relay.ErrPermanent) && strings.Contains(err.Error(), "relay migrate"), nil
	})
	if _, err := b.pool.Exec(ctx, `ALTER TABLE outbox_away RENAME TO outbox`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "ready again", func() (bool, error) { return r.Ready(ctx) == nil, nil })
}
