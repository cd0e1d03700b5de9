package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLoggerBoundsLines(t *testing.T) {
	var buf bytes.Buffer
	r := New(slog.New(slog.NewTextHandler(&buf, nil)), time.Hour)
	suppressed := 0
	r.OnSuppress = func() { suppressed++ }
	long := strings.Repeat("x", 14000)
	for range 1000 {
		r.WarnKey("10.0.0.1:5060", "body refused", "err", long)
		r.WarnKey("10.0.0.2:5060", "body refused", "err", long)
		r.WarnKey("10.0.0.1:5060", "not JSON", "err", long)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want one per (message, source): %q", len(lines), lines)
	}
	for _, l := range lines {
		if len(l) > 2*MaxValue {
			t.Errorf("line of %d bytes, want it capped near %d", len(l), MaxValue)
		}
	}
	if r.Suppressed() != 2997 || suppressed != 2997 {
		t.Errorf("suppressed %d (hook %d), want 2997", r.Suppressed(), suppressed)
	}
}

func TestLoggerManySources(t *testing.T) {
	var buf bytes.Buffer
	r := New(slog.New(slog.NewTextHandler(&buf, nil)), time.Hour)
	for i := range 3 * maxKeys {
		r.WarnKey(strings.Repeat("k", 1+i%7)+string(rune('a'+i%26))+string(rune(i)), "refused")
	}
	if n := strings.Count(buf.String(), "\n"); n > maxKeys+1 {
		t.Errorf("%d lines for %d sources, want at most %d", n, 3*maxKeys, maxKeys+1)
	}
	if len(r.slots) > maxKeys+1 {
		t.Errorf("%d slots, want at most %d", len(r.slots), maxKeys+1)
	}
}

func TestLoggerReportsHeldLines(t *testing.T) {
	var buf bytes.Buffer
	r := New(slog.New(slog.NewTextHandler(&buf, nil)), time.Millisecond)
	r.Warn("refused")
	r.Warn("refused")
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), "suppressed=") && time.Now().Before(deadline) {
		r.Warn("refused")
	}
	if !strings.Contains(buf.String(), "suppressed=") {
		t.Errorf("no suppressed count in %q", buf.String())
	}
}
