// Package netstring reads and writes netstrings (`<length>:<payload>,`),
// the framing of Kamailio's evapi, jsonrpcc and janssonrpcc.
package netstring

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

var (
	// ErrMalformed means the stream is not netstrings; it cannot be resynced.
	ErrMalformed = errors.New("malformed netstring")
	// ErrTooBig means a frame announces more bytes than the reader allows.
	ErrTooBig = errors.New("netstring too big")
)

// Reader reads netstrings from a stream.
type Reader struct {
	r   *bufio.Reader
	max int
	buf []byte
}

// NewReader reads netstrings of at most max payload bytes from r.
func NewReader(r io.Reader, max int) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, 64<<10), max: max}
}

// Next returns the next payload; it is valid until the next call. At a clean
// end of stream it returns io.EOF; inside a frame io.ErrUnexpectedEOF.
func (r *Reader) Next() ([]byte, error) {
	// Kamailio's evapi accepts whitespace between frames; so do we.
	var c byte
	var err error
	for {
		if c, err = r.r.ReadByte(); err != nil {
			return nil, err
		}
		if c != ' ' && c != '\n' && c != '\r' && c != '\t' {
			break
		}
	}
	length, digits := 0, 0
	for ; c != ':'; digits++ {
		if c < '0' || c > '9' {
			return nil, fmt.Errorf("%w: %q where a length digit or ':' should be (want e.g. 2:{},)", ErrMalformed, c)
		}
		if digits == 1 && length == 0 {
			return nil, fmt.Errorf("%w: length with a leading zero", ErrMalformed)
		}
		length = length*10 + int(c-'0')
		if length > r.max {
			return nil, fmt.Errorf("%w: more than %d bytes", ErrTooBig, r.max)
		}
		if c, err = r.r.ReadByte(); err != nil {
			return nil, unexpected(err)
		}
	}
	if digits == 0 {
		return nil, fmt.Errorf("%w: no length before ':'", ErrMalformed)
	}
	if cap(r.buf) < length+1 {
		r.buf = make([]byte, length+1)
	}
	b := r.buf[:length+1]
	if _, err := io.ReadFull(r.r, b); err != nil {
		return nil, unexpected(err)
	}
	if b[length] != ',' {
		return nil, fmt.Errorf("%w: %d-byte payload not followed by ','", ErrMalformed, length)
	}
	return b[:length], nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Append appends payload as one netstring to dst.
func Append(dst, payload []byte) []byte {
	dst = strconv.AppendInt(dst, int64(len(payload)), 10)
	dst = append(dst, ':')
	dst = append(dst, payload...)
	return append(dst, ',')
}
