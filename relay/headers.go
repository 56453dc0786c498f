package relay

import (
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxrelay/outboxrelay/outbox"
)

// decodeHeaders turns the row's jsonb headers into an AMQP table, checked
// against the header table budget of the default frame_max. The mapping
// and the limits (names, width, depth, encoded size) are outbox's, the
// same outbox.Enqueue applies, so the producer and the relay cannot
// disagree about what is publishable; checkRow does the same with the
// negotiated frame_max.
func decodeHeaders(raw []byte) (amqp.Table, error) {
	return headersTable(raw, outbox.DefaultFrameMax)
}

func headersTable(raw []byte, frameMax int) (amqp.Table, error) {
	return rowHeadersTable(raw, frameMax, outbox.AMQPProperties{})
}

func rowHeadersTable(raw []byte, frameMax int, props outbox.AMQPProperties) (amqp.Table, error) {
	obj, err := outbox.DecodeRowHeaders(raw, frameMax, props)
	if err != nil || obj == nil {
		return nil, err
	}
	return toTable(obj), nil
}

// toTable retypes the decoded tree for amqp091-go, whose encoder knows
// nested tables only as amqp.Table, not map[string]any. Scalars are
// already the AMQP types (string, int64, float64, bool, nil).
func toTable(obj map[string]any) amqp.Table {
	t := amqp.Table(obj)
	for k, v := range t {
		t[k] = toAMQP(v)
	}
	return t
}

func toAMQP(v any) any {
	switch x := v.(type) {
	case map[string]any:
		return toTable(x)
	case []any:
		for i, e := range x {
			x[i] = toAMQP(e)
		}
		return x
	default:
		return v
	}
}
