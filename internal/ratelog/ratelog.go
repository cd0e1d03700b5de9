// Package ratelog logs refusals at a bounded rate: at most one line per
// interval for each (message, key) pair, every string value capped in length,
// and a count of the lines held back. A flood of garbage from the network must
// not turn into a flood of log lines (each line costs disk and CPU, and a
// 14 KB body echoed per datagram is a log-filling attack of its own).
package ratelog

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// MaxValue is the longest string value (after formatting errors and
// Stringers) that a line carries; longer ones are cut and marked.
const MaxValue = 256

// maxKeys bounds the memory held for per-key timing: a sender that varies its
// source address on every packet must not grow the table without end. Past
// it, new keys share one slot per message (and the table may hold one more
// slot per message for them).
const maxKeys = 4096

// Logger logs at most once per interval per (message, key).
type Logger struct {
	log      *slog.Logger
	interval time.Duration
	// OnSuppress, when set, is called for every line held back (a metric).
	OnSuppress func()

	mu        sync.Mutex
	slots     map[slotKey]*slot
	lastSweep time.Time

	suppressed atomic.Uint64
}

type slotKey struct{ msg, key string }

type slot struct {
	last time.Time
	held int
}

// New returns a Logger that writes through log.
func New(log *slog.Logger, interval time.Duration) *Logger {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Logger{log: log, interval: interval, slots: make(map[slotKey]*slot)}
}

// Warn logs msg at most once per interval, whatever its arguments.
func (r *Logger) Warn(msg string, args ...any) { r.WarnKey("", msg, args...) }

// WarnKey logs msg at most once per interval for each key (typically the
// source address), so that one noisy sender cannot hide another.
func (r *Logger) WarnKey(key, msg string, args ...any) {
	r.logKey(slog.LevelWarn, key, msg, args)
}

// InfoKey is WarnKey at level info.
func (r *Logger) InfoKey(key, msg string, args ...any) {
	r.logKey(slog.LevelInfo, key, msg, args)
}

// Suppressed is the number of lines held back so far.
func (r *Logger) Suppressed() uint64 { return r.suppressed.Load() }

func (r *Logger) logKey(level slog.Level, key, msg string, args []any) {
	now := time.Now()
	r.mu.Lock()
	k := slotKey{msg, Cap(key)}
	s := r.slots[k]
	if s == nil {
		if len(r.slots) >= maxKeys && now.Sub(r.lastSweep) >= r.interval {
			r.sweepLocked(now)
		}
		if len(r.slots) >= maxKeys {
			k.key = "(other)"
			s = r.slots[k]
		}
		if s == nil {
			s = &slot{}
			r.slots[k] = s
		}
	}
	if !s.last.IsZero() && now.Sub(s.last) < r.interval {
		s.held++
		r.mu.Unlock()
		r.suppressed.Add(1)
		if r.OnSuppress != nil {
			r.OnSuppress()
		}
		return
	}
	held := s.held
	s.held, s.last = 0, now
	r.mu.Unlock()
	if held > 0 {
		args = append(args, "suppressed", held)
	}
	r.log.Log(context.Background(), level, Cap(msg), capArgs(args)...)
}

// sweepLocked forgets keys that have been quiet for an interval; their held
// counts are lost, which only understates a count that is already a summary.
func (r *Logger) sweepLocked(now time.Time) {
	r.lastSweep = now
	for k, s := range r.slots {
		if now.Sub(s.last) >= r.interval {
			delete(r.slots, k)
		}
	}
}

// Cap cuts s to MaxValue bytes and says how long it was.
func Cap(s string) string {
	if len(s) <= MaxValue {
		return s
	}
	return fmt.Sprintf("%s…(%d bytes)", s[:MaxValue], len(s))
}

// capArgs caps every string-like value of slog key/value pairs.
func capArgs(args []any) []any {
	out := make([]any, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case string:
			out[i] = Cap(v)
		case []byte:
			out[i] = Cap(string(v))
		case error:
			out[i] = Cap(v.Error())
		case fmt.Stringer:
			out[i] = Cap(v.String())
		default:
			out[i] = a
		}
	}
	return out
}
