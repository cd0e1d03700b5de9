package kazoo

import (
	"errors"
	"fmt"
)

// Frame errors; each ends the connection because the stream can no longer be trusted.
var (
	errFrameTooBig = errors.New("frame larger than jsonrpc.max_frame")
	errBadFrame    = errors.New("malformed frame")
)

// scanJSON reports the length of the first complete JSON value in b, including leading
// whitespace: 0 when more bytes are needed. OpenSIPS's jsonrpc module sends one raw
// value per connection with no delimiter and no half-close, so the end of the value is
// the only end of the request there is. It checks structure only (brackets, strings,
// escapes); the parser validates the rest.
func scanJSON(b []byte) (int, error) {
	i := 0
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	if i == len(b) {
		return 0, nil
	}
	switch b[i] {
	case '{', '[':
	default:
		return 0, fmt.Errorf("%w: a request must be a JSON object, got %q", errBadFrame, b[i])
	}
	depth := 0
	inStr, esc := false, false
	for ; i < len(b); i++ {
		c := b[i]
		if inStr {
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
			continue
		}
		switch c {
		case '"':
			inStr = true
		case '{', '[':
			depth++
			if depth > 64 {
				return 0, fmt.Errorf("%w: nested deeper than 64", errBadFrame)
			}
		case '}', ']':
			depth--
			if depth == 0 {
				return i + 1, nil
			}
		}
	}
	return 0, nil
}
