package testenv

import (
	"testing"
	"time"
)

// WaitFor polls cond until it holds, and fails the test when d passes first:
// tests wait for a condition, never sleep and hope.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := Poll(d, 10*time.Millisecond, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	}); err != nil {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// WaitForErr polls f until it returns nil, and fails the test with f's last
// error when d passes first.
func WaitForErr(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	if err := Poll(d, 10*time.Millisecond, f); err != nil {
		t.Fatalf("timed out after %v waiting for %s: %v", d, what, err)
	}
}

// Poll calls f every interval until it returns nil or d passes, and returns
// f's last error.
func Poll(d, interval time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(interval)
	}
}

type notYet struct{}

func (notYet) Error() string { return "not yet" }

var errNotYet error = notYet{}
