package testenv

import (
	"bytes"
	"strings"
	"sync"
)

// Buffer is a bytes.Buffer that a process or logger writes while the test
// reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Count is how many times substr was written (as strings.Count).
func (l *Buffer) Count(substr string) int { return strings.Count(l.String(), substr) }

// Longest is the length of the longest line written.
func (l *Buffer) Longest() int {
	m := 0
	for _, line := range strings.Split(l.String(), "\n") {
		m = max(m, len(line))
	}
	return m
}
