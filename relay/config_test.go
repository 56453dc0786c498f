package relay_test

import (
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/outboxrelay/relay"
)

// Each invalid Config gets an error naming the one field at fault.
func TestConfigErrorsNameOneField(t *testing.T) {
	t.Parallel()
	urls := []string{"amqp://127.0.0.1:1/"}
	cases := []struct {
		field string
		cfg   relay.Config
	}{
		{"AMQPURLs", relay.Config{}},
		{"BatchSize", relay.Config{AMQPURLs: urls, BatchSize: -1}},
		{"Workers", relay.Config{AMQPURLs: urls, Workers: -1}},
		{"MaxAttempts", relay.Config{AMQPURLs: urls, MaxAttempts: -1}},
		{"MaxPayloadBytes", relay.Config{AMQPURLs: urls, MaxPayloadBytes: -1}},
		{"Retention", relay.Config{AMQPURLs: urls, Retention: -time.Second}},
		{"OrderingPolicy", relay.Config{AMQPURLs: urls, OrderingPolicy: "sometimes"}},
		{"MaxBatchBytes", relay.Config{AMQPURLs: urls, MaxPayloadBytes: 2 << 20, MaxBatchBytes: 1 << 20}},
		{"RetryMax", relay.Config{AMQPURLs: urls, RetryBase: time.Minute, RetryMax: time.Second}},
		{"ReconnectMax", relay.Config{AMQPURLs: urls, ReconnectMin: time.Minute, ReconnectMax: time.Second}},
	}
	fields := []string{"AMQPURLs", "BatchSize", "Workers", "MaxAttempts", "MaxPayloadBytes", "Retention",
		"OrderingPolicy", "MaxBatchBytes", "RetryMax", "ReconnectMax"}
	for _, c := range cases {
		_, err := relay.New(nil, c.cfg)
		if err == nil {
			t.Errorf("%s: no error", c.field)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "Config."+c.field+" ") {
			t.Errorf("%s: error %q does not name Config.%s", c.field, msg, c.field)
		}
		for _, other := range fields {
			if other != c.field && strings.Contains(msg, "Config."+other+" ") {
				t.Errorf("%s: error %q also names Config.%s", c.field, msg, other)
			}
		}
	}
	if _, err := relay.New(nil, relay.Config{AMQPURLs: urls}); err != nil {
		t.Errorf("a valid Config: %v", err)
	}
}
