package mi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
)

// Param is one named parameter.
type Param struct {
	Name  string
	Value any
}

// Named is a list of named parameters sent as a JSON object in this order. Use it
// instead of a map when order matters: Kamailio ignores the names and takes the
// values in order, and a Go map has none.
type Named []Param

// MarshalJSON writes the parameters as an object in their order.
func (n Named) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, p := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := marshal(p.Name)
		if err != nil {
			return nil, err
		}
		v, err := marshal(p.Value)
		if err != nil {
			return nil, fmt.Errorf("param %s: %w", p.Name, err)
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// marshal is json.Marshal without HTML escaping, so that <, > and & reach the
// proxy as themselves, as the proxies' own tools send them.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// encodeParams turns Call's params into compact JSON: nil for none, else an array or object.
func encodeParams(d Dialect, params any) ([]byte, error) {
	switch p := params.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		return compactContainer(p)
	case []byte:
		return compactContainer(p)
	case Named:
		return p.MarshalJSON()
	}
	rv := reflect.ValueOf(params)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		if rv.Kind() == reflect.Slice && rv.IsNil() {
			return nil, nil
		}
	case reflect.Map:
		if d == Kamailio && rv.Len() > 1 {
			return nil, fmt.Errorf("kamailio takes parameters by position and ignores names: pass a list, or mi.Named to fix their order (a Go map has none)")
		}
	case reflect.Struct:
	default:
		return nil, fmt.Errorf("params must be nil, a list or named values, not %T", params)
	}
	b, err := marshal(params)
	if err != nil {
		return nil, fmt.Errorf("encode params: %w", err)
	}
	return b, nil
}

func compactContainer(raw []byte) ([]byte, error) {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return nil, fmt.Errorf("params are not valid JSON: %w", err)
	}
	if c := b.Bytes(); len(c) == 0 || (c[0] != '[' && c[0] != '{') {
		return nil, fmt.Errorf("params must be a JSON array or object, got %.40s", raw)
	}
	return b.Bytes(), nil
}

// encodeRequest builds the request body. OpenSIPS gets compact JSON, Kamailio the
// spaced form its own kamctl sends; member order is jsonrpc, method, params, id as in
// the recorded tools' requests (see testdata/*.golden). replyName is Kamailio's FIFO
// "reply_name" member; "" leaves it out.
func encodeRequest(d Dialect, method string, params []byte, id uint32, replyName string) []byte {
	m, _ := marshal(method)
	b := make([]byte, 0, 48+len(method)+len(params)+len(replyName))
	if d == Kamailio {
		b = append(b, `{"jsonrpc": "2.0", "method": `...)
		b = append(b, m...)
		if params != nil {
			b = append(b, `, "params": `...)
			b = appendSpaced(b, params)
		}
		b = append(b, `, "id": `...)
		b = strconv.AppendUint(b, uint64(id), 10)
		if replyName != "" {
			n, _ := marshal(replyName)
			b = append(b, `, "reply_name": `...)
			b = append(b, n...)
		}
		return append(b, '}')
	}
	b = append(b, `{"jsonrpc":"2.0","method":`...)
	b = append(b, m...)
	if params != nil {
		b = append(b, `,"params":`...)
		b = append(b, params...)
	}
	b = append(b, `,"id":`...)
	b = strconv.AppendUint(b, uint64(id), 10)
	return append(b, '}')
}

// appendSpaced appends compact JSON with a space after each ',' and ':' outside
// strings, the separators of Python's json.dumps and of kamctl.
func appendSpaced(dst, compact []byte) []byte {
	inStr, esc := false, false
	for _, c := range compact {
		dst = append(dst, c)
		switch {
		case esc:
			esc = false
		case inStr && c == '\\':
			esc = true
		case c == '"':
			inStr = !inStr
		case !inStr && (c == ',' || c == ':'):
			dst = append(dst, ' ')
		}
	}
	return dst
}
