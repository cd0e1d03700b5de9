package evi

import (
	"bufio"
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
	sc := bufio.NewScanner(in.r)
	sc.Buffer(make([]byte, 64<<10), in.max)
	for sc.Scan() {
		if ctx.Err() != nil {
			return nil
		}
		line := sc.Bytes()
		if skipWS(line, 0) == len(line) {
			continue
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
			continue
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
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			in.reject(fmt.Errorf("a line longer than max_frame (%d bytes)", in.max), in.max)
		}
		return fmt.Errorf("input %s: %w", in.name, err)
	}
	return nil
}

// Close does nothing: stdin belongs to the process.
func (in *stdinInput) Close() error { return nil }
