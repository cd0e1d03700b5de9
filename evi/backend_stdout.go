package evi

import (
	"context"
	"fmt"
	"io"
	"sync"
)

// stdoutBackend writes each event as one JSON line. It batches lines in
// memory and writes them when the route's queue runs dry (Flush), so that a
// burst costs one write(2) instead of one per event.
type stdoutBackend struct {
	w   io.Writer
	mu  sync.Mutex
	buf []byte
}

func newStdoutBackend(rest string, d Deps) (Backend, error) {
	if rest != "" {
		return nil, fmt.Errorf("write stdout: with nothing after the colon")
	}
	return &stdoutBackend{w: d.Stdout, buf: make([]byte, 0, 64<<10)}, nil
}

func (s *stdoutBackend) Deliver(_ context.Context, ev *Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = AppendJSONLine(s.buf, ev)
	if len(s.buf) >= 60<<10 {
		return s.flushLocked()
	}
	return nil
}

// Flush writes the batched lines.
func (s *stdoutBackend) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flushLocked()
}

func (s *stdoutBackend) flushLocked() error {
	if len(s.buf) == 0 {
		return nil
	}
	_, err := s.w.Write(s.buf)
	s.buf = s.buf[:0]
	if err != nil {
		return fmt.Errorf("stdout: %w", err)
	}
	return nil
}

func (s *stdoutBackend) Close() error { return s.Flush() }

// immediate tells the router that Deliver only appends to memory.
func (s *stdoutBackend) immediate() {}

func (s *stdoutBackend) String() string { return "stdout:" }
