package outbox_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/outboxrelay/outboxrelay/outbox"
)

func TestCheckAMQPProperties(t *testing.T) {
	t.Parallel()
	cases := []struct {
		p           outbox.AMQPProperties
		field, kind string // "" when valid
	}{
		{outbox.AMQPProperties{}, "", ""},
		{outbox.AMQPProperties{Type: "order.created", CorrelationID: "c", ReplyTo: "amq.rabbitmq.reply-to", Expiration: "0", Priority: 255, AppID: "shop ✓"}, "", ""},
		{outbox.AMQPProperties{Expiration: "4294967295"}, "", ""},
		{outbox.AMQPProperties{Expiration: "4294967296"}, "expiration", "range"},
		{outbox.AMQPProperties{Expiration: "00000000001"}, "expiration", "range"},
		{outbox.AMQPProperties{Expiration: "1.5"}, "expiration", "format"},
		{outbox.AMQPProperties{Expiration: " 1"}, "expiration", "format"},
		{outbox.AMQPProperties{Type: strings.Repeat("t", 256)}, "type", "length"},
		{outbox.AMQPProperties{CorrelationID: "a\tb"}, "correlation_id", "control"},
		{outbox.AMQPProperties{ReplyTo: "\xff"}, "reply_to", "utf8"},
		{outbox.AMQPProperties{AppID: "a\x7f"}, "app_id", "control"},
	}
	for _, tc := range cases {
		err := outbox.CheckAMQPProperties(tc.p)
		var le *outbox.LimitError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%+v: %v, want valid", tc.p, err)
		case tc.field != "" && (!errors.As(err, &le) || le.Field != tc.field || le.Limit != tc.kind):
			t.Errorf("%+v: %v, want a %s limit on %s", tc.p, err, tc.kind, tc.field)
		}
	}
}

// The optional properties share the content header frame with the header
// table: a table that fits the budget alone no longer fits beside them.
func TestHeaderBudgetCountsAMQPProperties(t *testing.T) {
	t.Parallel()
	// {"h":"vvv…"}: 4 (table length) + 1+1 (name) + 1+4 (longstr) + len.
	raw := []byte(fmt.Sprintf(`{"h":%q}`, strings.Repeat("v", outbox.MaxHeaderTableBytes-11)))
	if _, err := outbox.DecodeRowHeaders(raw, 0, outbox.AMQPProperties{}); err != nil {
		t.Fatalf("a table at the budget was refused: %v", err)
	}
	_, err := outbox.DecodeRowHeaders(raw, 0, outbox.AMQPProperties{Priority: 1})
	var le *outbox.LimitError
	if !errors.As(err, &le) || le.Limit != "size" || !strings.Contains(err.Error(), "AMQP properties (1 bytes)") {
		t.Fatalf("with a priority: %v, want a size limit naming the properties", err)
	}
	msg := outbox.Message{RoutingKey: "k", Payload: []byte{}, Headers: map[string]any{"h": strings.Repeat("v", outbox.MaxHeaderTableBytes-11)}, AppID: "a"}
	if err := msg.Validate(); !errors.As(err, &le) || le.Limit != "size" {
		t.Fatalf("Validate with an app id: %v, want a size limit", err)
	}
}
