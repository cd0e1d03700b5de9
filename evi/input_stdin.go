package evi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// stdinInput reads one event per line: an OpenSIPS notification or a line
// of sipside's own JSON-lines output, so that `sipside run > events.log`
// can be replayed with `sipside events --listen stdin: --to … < events.log`.
// Lines keep their order; the input ends at end of file.
type stdinInput struct {
	inputBase
	r   io.Reader
	max int
}

func (in *stdinInput) Run(ctx context.Context, sink Sink) error {
	br := bufio.NewReaderSize(in.r, 64<<10)
	var long []byte // a line longer than the reader's buffer, gathered up to max
	tooLong := false
	for ctx.Err() == nil {
		chunk, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// Keep gathering, but never more than max_frame: a line that
			// long is skipped to its end, counted, and reading goes on.
			if !tooLong && len(long)+len(chunk) <= in.max {
				long = append(long, chunk...)
			} else {
				tooLong, long = true, long[:0]
			}
			continue
		}
		line := chunk
		if len(long) > 0 {
			line = append(long, chunk...)
			long = long[:0]
		}
		switch {
		case tooLong || len(line) > in.max:
			in.reject(fmt.Errorf("a line longer than max_frame (%d bytes) skipped", in.max), len(line))
			tooLong = false
		case len(line) > 0:
			in.line(bytes.TrimRight(line, "\r\n"), sink)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("input %s: %w", in.name, err)
		}
	}
	return nil
}

// line turns one line into an event.
func (in *stdinInput) line(line []byte, sink Sink) {
	if skipWS(line, 0) == len(line) {
		return
	}
	note, end, err := parseObject(line, true)
	if err == nil && skipWS(line, end) != len(line) {
		err = errors.New("trailing data after the event on this line")
	}
	if errors.Is(err, ErrIncomplete) {
		err = errors.New("the line ends inside the JSON value")
	}
	var name string
	if err == nil {
		name, err = note.Name()
	}
	if err != nil {
		in.reject(err, len(line))
		return
	}
	raw := append([]byte(nil), line...)
	ev := &Event{Name: name, Received: time.Now(), Source: in.name}
	if note.Params != nil {
		off := cap(line) - cap(note.Params)
		ev.Params = raw[off : off+len(note.Params) : off+len(note.Params)]
	}
	in.received.Inc()
	sink.Accept(ev)
}

// Close does nothing: stdin belongs to the process.
func (in *stdinInput) Close() error { return nil }
