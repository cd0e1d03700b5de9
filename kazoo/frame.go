package kazoo

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Frame errors; each ends the connection because the stream can no longer be trusted.
var (
	errFrameTooBig = errors.New("frame larger than jsonrpc.max_frame")
	errBadFrame    = errors.New("malformed frame")
)

// netstringReader reads `<decimal length>:<payload>,` frames as Kamailio's jsonrpcc,
// janssonrpcc and evapi write them. Whitespace between frames is skipped, as evapi does.
type netstringReader struct {
	r   *bufio.Reader
	max int
}

// Next returns the next payload. The slice is only valid until the following call.
func (n *netstringReader) Next(buf []byte) ([]byte, error) {
	length, digits := 0, 0
	for {
		c, err := n.r.ReadByte()
		if err != nil {
			if digits > 0 && errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		switch {
		case c >= '0' && c <= '9':
			if digits > 0 && length == 0 {
				return nil, fmt.Errorf("%w: leading zero in netstring length", errBadFrame)
			}
			length = length*10 + int(c-'0')
			digits++
			if length > n.max {
				return nil, fmt.Errorf("%w: netstring length above %d", errFrameTooBig, n.max)
			}
		case c == ':' && digits > 0:
			if cap(buf) < length+1 {
				buf = make([]byte, length+1)
			}
			buf = buf[:length+1]
			if _, err := io.ReadFull(n.r, buf); err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return nil, err
			}
			if buf[length] != ',' {
				return nil, fmt.Errorf("%w: netstring of %d bytes not followed by ','", errBadFrame, length)
			}
			return buf[:length], nil
		case digits == 0 && (c == ' ' || c == '\t' || c == '\r' || c == '\n'):
		default:
			return nil, fmt.Errorf("%w: unexpected %q where a netstring length was expected (want e.g. 2:{},)", errBadFrame, c)
		}
	}
}

// appendNetstring frames payload.
func appendNetstring(dst, payload []byte) []byte {
	dst = strconv.AppendInt(dst, int64(len(payload)), 10)
	dst = append(dst, ':')
	dst = append(dst, payload...)
	return append(dst, ',')
}

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
