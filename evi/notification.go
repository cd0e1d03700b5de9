package evi

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// MaxDepth bounds nesting in a notification, so that a hostile stream of
// '[' cannot grow the stack without limit.
const MaxDepth = 128

// ErrIncomplete means the bytes end inside a JSON value: a stream reader
// should read more, a datagram reader should call it truncated.
var ErrIncomplete = errors.New("incomplete JSON value")

// Notification is a JSON-RPC 2.0 notification or request as OpenSIPS's
// event_datagram and event_stream modules send it. Every []byte aliases the
// input buffer.
type Notification struct {
	Method []byte // raw JSON string token of "method", quotes included
	Params []byte // raw JSON of "params"; nil when absent
	ID     []byte // raw JSON of "id"; nil when absent (event_stream reliable mode sends one)
}

// Name returns the decoded method name.
func (n *Notification) Name() (string, error) {
	raw := n.Method[1 : len(n.Method)-1]
	simple := true
	for _, c := range raw {
		if c == '\\' || c >= utf8.RuneSelf {
			simple = false
			break
		}
	}
	if simple {
		return string(raw), nil
	}
	var s string
	if err := json.Unmarshal(n.Method, &s); err != nil {
		return "", fmt.Errorf("method: %w", err)
	}
	return s, nil
}

// ParseNotification reads one JSON value from the start of b and returns the
// notification and how many bytes it used (leading whitespace included).
// It keeps params as the exact bytes the proxy sent: OpenSIPS can send
// objects with duplicate keys and strings with invalid UTF-8, and a decode
// and re-encode would change them.
//
// Returns ErrIncomplete when b ends inside the value.
func ParseNotification(b []byte) (Notification, int, error) { return parseObject(b, false) }

// parseObject is ParseNotification; with eventKey it also takes sipside's
// own JSON lines, whose name is in "event" (for replaying sipside's output).
func parseObject(b []byte, eventKey bool) (Notification, int, error) {
	var n Notification
	i := skipWS(b, 0)
	if i == len(b) {
		return n, i, ErrIncomplete
	}
	if b[i] != '{' {
		// Still consume the value, so that a stream reader can skip it.
		end, err := skipValue(b, i, 0)
		if err != nil {
			return n, i, err
		}
		return n, end, fmt.Errorf("not a JSON-RPC notification: a JSON %s, want an object", kindOf(b[i]))
	}
	i++
	var version []byte // the "jsonrpc" member's value; nil when there is none
	for first := true; ; first = false {
		i = skipWS(b, i)
		if i == len(b) {
			return n, i, ErrIncomplete
		}
		if b[i] == '}' && first {
			return n, i + 1, n.complete(version)
		}
		if !first {
			switch b[i] {
			case ',':
				i = skipWS(b, i+1)
				if i == len(b) {
					return n, i, ErrIncomplete
				}
			case '}':
				return n, i + 1, n.complete(version)
			default:
				return n, i, fmt.Errorf("offset %d: want ',' or '}' after a member, got %q", i, b[i])
			}
		}
		key, val, end, err := readMember(b, i)
		if err != nil {
			return n, end, err
		}
		i = end
		if eventKey && string(key) == "event" {
			key = methodKey
		}
		if err := n.set(key, val, &version); err != nil {
			return n, i, err
		}
	}
}

var methodKey = []byte("method")

// readMember reads one "name": value pair starting at b[i], the opening quote.
func readMember(b []byte, i int) (key, val []byte, end int, err error) {
	if b[i] != '"' {
		return nil, nil, i, fmt.Errorf("offset %d: want a member name, got %q", i, b[i])
	}
	kend, err := skipString(b, i)
	if err != nil {
		return nil, nil, i, err
	}
	key = b[i+1 : kend-1]
	i = skipWS(b, kend)
	if i == len(b) {
		return nil, nil, i, ErrIncomplete
	}
	if b[i] != ':' {
		return nil, nil, i, fmt.Errorf("offset %d: want ':' after member name, got %q", i, b[i])
	}
	i = skipWS(b, i+1)
	if i == len(b) {
		return nil, nil, i, ErrIncomplete
	}
	vend, err := skipValue(b, i, 1)
	if err != nil {
		return nil, nil, i, err
	}
	return key, b[i:vend], vend, nil
}

// set takes one member; the ones a notification does not have are skipped.
func (n *Notification) set(key, val []byte, version *[]byte) error {
	switch string(key) {
	case "method":
		if n.Method != nil {
			return errors.New("duplicate \"method\" member")
		}
		if val[0] != '"' {
			return fmt.Errorf("\"method\" is a JSON %s, want a string", kindOf(val[0]))
		}
		n.Method = val
	case "params":
		if n.Params != nil {
			return errors.New("duplicate \"params\" member")
		}
		if val[0] != '{' && val[0] != '[' {
			return fmt.Errorf("\"params\" is a JSON %s, want an object or an array", kindOf(val[0]))
		}
		n.Params = val
	case "id":
		n.ID = val
	case "jsonrpc":
		*version = val
	}
	return nil
}

// complete checks what a notification must have once its object ended.
func (n *Notification) complete(version []byte) error {
	if n.Method == nil {
		return errors.New("no \"method\" member: not a JSON-RPC notification")
	}
	if len(n.Method) == 2 {
		return errors.New("empty \"method\": no event name")
	}
	if version != nil && string(version) != `"2.0"` {
		return fmt.Errorf("\"jsonrpc\" is %s, want \"2.0\"", version)
	}
	return nil
}

func kindOf(c byte) string {
	switch {
	case c == '{':
		return "object"
	case c == '[':
		return "array"
	case c == '"':
		return "string"
	case c == 't' || c == 'f':
		return "boolean"
	case c == 'n':
		return "null"
	default:
		return "number"
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipValue returns the offset just past the JSON value starting at b[i].
func skipValue(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return i, ErrIncomplete
	}
	switch c := b[i]; {
	case c == '"':
		return skipString(b, i)
	case c == '{' || c == '[':
		return skipContainer(b, i, depth)
	case c == 't':
		return skipLiteral(b, i, "true")
	case c == 'f':
		return skipLiteral(b, i, "false")
	case c == 'n':
		return skipLiteral(b, i, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		return skipNumber(b, i)
	default:
		return i, fmt.Errorf("offset %d: unexpected %q where a JSON value should start", i, c)
	}
}

func skipContainer(b []byte, i, depth int) (int, error) {
	if depth >= MaxDepth {
		return i, fmt.Errorf("offset %d: nested deeper than %d levels", i, MaxDepth)
	}
	obj := b[i] == '{'
	closer := byte(']')
	if obj {
		closer = '}'
	}
	i = skipWS(b, i+1)
	if i == len(b) {
		return i, ErrIncomplete
	}
	if b[i] == closer {
		return i + 1, nil
	}
	for {
		var err error
		if obj {
			if b[i] != '"' {
				return i, fmt.Errorf("offset %d: want a member name, got %q", i, b[i])
			}
			if i, err = skipString(b, i); err != nil {
				return i, err
			}
			i = skipWS(b, i)
			if i == len(b) {
				return i, ErrIncomplete
			}
			if b[i] != ':' {
				return i, fmt.Errorf("offset %d: want ':', got %q", i, b[i])
			}
			i = skipWS(b, i+1)
		}
		if i, err = skipValue(b, i, depth+1); err != nil {
			return i, err
		}
		i = skipWS(b, i)
		if i == len(b) {
			return i, ErrIncomplete
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
			if i == len(b) {
				return i, ErrIncomplete
			}
		case closer:
			return i + 1, nil
		default:
			return i, fmt.Errorf("offset %d: want ',' or %q, got %q", i, closer, b[i])
		}
	}
}

func skipString(b []byte, i int) (int, error) {
	i++ // opening quote
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			return i + 1, nil
		case c == '\\':
			if i+1 >= len(b) {
				return len(b), ErrIncomplete
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for k := 2; k < 6; k++ {
					if i+k >= len(b) {
						return len(b), ErrIncomplete
					}
					if !isHex(b[i+k]) {
						return i, fmt.Errorf("offset %d: bad \\u escape", i)
					}
				}
				i += 6
			default:
				return i, fmt.Errorf("offset %d: bad escape \\%c", i, b[i+1])
			}
		case c < 0x20:
			return i, fmt.Errorf("offset %d: control character 0x%02x inside a string", i, c)
		default:
			i++
		}
	}
	return i, ErrIncomplete
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func skipLiteral(b []byte, i int, lit string) (int, error) {
	for k := 0; k < len(lit); k++ {
		if i+k >= len(b) {
			return len(b), ErrIncomplete
		}
		if b[i+k] != lit[k] {
			return i, fmt.Errorf("offset %d: bad literal, want %s", i, lit)
		}
	}
	return i + len(lit), nil
}

// skipNumber follows RFC 8259's number grammar. A number at the very end of
// the buffer is reported incomplete: in a stream more digits may follow.
func skipNumber(b []byte, i int) (int, error) {
	start := i
	if b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if i == len(b) {
		return i, ErrIncomplete
	}
	if b[i] == '0' {
		i++
	} else if digits() == 0 {
		return i, fmt.Errorf("offset %d: bad number", start)
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			if i == len(b) {
				return i, ErrIncomplete
			}
			return i, fmt.Errorf("offset %d: bad number", start)
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			if i == len(b) {
				return i, ErrIncomplete
			}
			return i, fmt.Errorf("offset %d: bad number", start)
		}
	}
	if i == len(b) {
		return i, ErrIncomplete
	}
	return i, nil
}
