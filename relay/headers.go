package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	amqp "github.com/rabbitmq/amqp091-go"
)

// decodeHeaders turns the row's jsonb headers into an AMQP table. JSON has
// fewer types than AMQP, so the mapping is: string -> longstr, integral
// number -> int64, other number -> float64, bool -> bool, null -> void,
// object -> nested table, array -> array. The result is validated the way
// the broker would see it, so a bad header fails its row, not the channel.
func decodeHeaders(raw []byte) (amqp.Table, error) {
	if len(raw) == 0 || string(raw) == "{}" { // the column default: skip the decoder
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var top any
	if err := dec.Decode(&top); err != nil {
		return nil, fmt.Errorf("headers: %w", err)
	}
	if dec.More() {
		return nil, errors.New("headers: trailing data after JSON object")
	}
	obj, ok := top.(map[string]any)
	if !ok {
		return nil, errors.New("headers: must be a JSON object")
	}
	if len(obj) == 0 {
		return nil, nil
	}
	t, err := toTable(obj, 0)
	if err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("headers: %w", err)
	}
	return t, nil
}

const maxHeaderDepth = 32

func toTable(obj map[string]any, depth int) (amqp.Table, error) {
	t := make(amqp.Table, len(obj))
	for k, v := range obj {
		if len(k) > 255 {
			return nil, fmt.Errorf("headers: name %.20q... longer than 255 bytes", k)
		}
		conv, err := toAMQP(v, depth+1)
		if err != nil {
			return nil, fmt.Errorf("headers: %q: %w", k, err)
		}
		t[k] = conv
	}
	return t, nil
}

func toAMQP(v any, depth int) (any, error) {
	if depth > maxHeaderDepth {
		return nil, errors.New("nested deeper than 32 levels")
	}
	switch x := v.(type) {
	case nil, string, bool:
		return x, nil
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i, nil
		}
		f, err := x.Float64()
		if err != nil || math.IsInf(f, 0) {
			return nil, fmt.Errorf("number %s out of range", x)
		}
		return f, nil
	case map[string]any:
		return toTable(x, depth)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			c, err := toAMQP(e, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	default:
		return nil, fmt.Errorf("unsupported JSON value %T", v)
	}
}
