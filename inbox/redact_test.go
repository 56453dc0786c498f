package inbox_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/outboxrelay/inbox"
)

// The AMQP password never shows: not in New's error for a malformed URL,
// not in the logs of a consumer whose broker refuses it.
func TestAMQPPasswordIsNeverPrinted(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-pw"
	handler := func(context.Context, pgx.Tx, inbox.Message) error { return nil }
	logs := &lineWaiter{want: "broker dial failed", seen: make(chan struct{})}
	cfg := inbox.Config{
		Queue: "q", Name: "n", DB: nilDB{}, Handler: handler,
		Logger:       slog.New(slog.NewTextHandler(logs, nil)),
		ReconnectMin: time.Millisecond, ReconnectMax: 10 * time.Millisecond,
		RetentionWindow: -1, // no database here
	}
	for _, bad := range []string{"app:" + secret + "@broker:5672", "amqp://app:" + secret + "/x@broker/", "amqp://app:" + secret + "@bro ker/"} {
		cfg.AMQPURLs = []string{bad}
		_, err := inbox.New(cfg)
		if err == nil || strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "AMQPURLs[0]") {
			t.Errorf("New with a malformed URL: %v; want an error naming AMQPURLs[0] without the password", err)
		}
	}

	// Port 1: nothing listens, every dial fails.
	cfg.AMQPURLs = []string{"amqp://app:" + secret + "@127.0.0.1:1/"}
	c, err := inbox.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	select {
	case <-logs.seen:
	case <-time.After(waitLimit):
		t.Fatal("no dial failure logged")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if strings.Contains(out, secret) {
		t.Errorf("the logs show the password:\n%s", out)
	}
	if !strings.Contains(out, "127.0.0.1:1") {
		t.Errorf("the logs do not name the broker:\n%s", out)
	}
}

type nilDB struct{ inbox.DB }

// lineWaiter keeps what is written and closes seen at the first write
// containing want.
type lineWaiter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
	once sync.Once
}

func (w *lineWaiter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if bytes.Contains(p, []byte(w.want)) {
		w.once.Do(func() { close(w.seen) })
	}
	return w.buf.Write(p)
}

func (w *lineWaiter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
