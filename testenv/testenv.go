// Package testenv starts real parts (RabbitMQ, Kamailio) on loopback for the tests of other
// packages. Every process it starts belongs to the test binary that started it: Main stops them
// (by pid, as a process group) and removes their temporary directories when the tests end.
package testenv

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// registry is the one piece of package state: what this test binary started, so that Main can
// clean it up even when a test forgot to, failed half way, or the binary got SIGINT/SIGTERM.
var registry struct {
	mu      sync.Mutex
	procs   map[*proc]struct{}
	dirs    map[string]struct{}
	closers []func() error // shared instances, closed before procs are killed
	seq     int
}

func register(p *proc) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if registry.procs == nil {
		registry.procs = make(map[*proc]struct{})
	}
	registry.procs[p] = struct{}{}
}

func unregister(p *proc) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	delete(registry.procs, p)
}

func registerDir(dir string) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if registry.dirs == nil {
		registry.dirs = make(map[string]struct{})
	}
	registry.dirs[dir] = struct{}{}
}

func unregisterDir(dir string) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	delete(registry.dirs, dir)
}

func registerCloser(f func() error) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	registry.closers = append(registry.closers, f)
}

// nextSeq numbers instances so that names (node names, temp dirs) are unique within a binary.
func nextSeq() int {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	registry.seq++
	return registry.seq
}

// Main runs the tests and then stops everything they started. Call it from TestMain:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
func Main(m *testing.M) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s, ok := <-sig
		if !ok {
			return
		}
		slog.Warn("testenv: signal received, stopping started processes", "signal", s)
		Cleanup()
		os.Exit(1)
	}()
	code := m.Run()
	signal.Stop(sig)
	Cleanup()
	os.Exit(code)
}

// Cleanup closes shared instances, kills every process group still registered and removes the
// temporary directories. Main calls it; it is exported for binaries that cannot use Main.
func Cleanup() {
	registry.mu.Lock()
	closers := registry.closers
	registry.closers = nil
	registry.mu.Unlock()
	for _, c := range closers {
		if err := c(); err != nil {
			slog.Warn("testenv: closing shared instance", "err", err)
		}
	}

	registry.mu.Lock()
	procs := make([]*proc, 0, len(registry.procs))
	for p := range registry.procs {
		procs = append(procs, p)
	}
	registry.mu.Unlock()
	for _, p := range procs {
		p.kill()
	}

	registry.mu.Lock()
	dirs := make([]string, 0, len(registry.dirs))
	for d := range registry.dirs {
		dirs = append(dirs, d)
	}
	registry.dirs = nil
	registry.mu.Unlock()
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			slog.Warn("testenv: removing temp dir", "dir", d, "err", err)
		}
	}
}

// Missing reports that a real part is not installed. In CI (CI=true) that is a failure, because
// a silently skipped integration test hides regressions; on a developer machine it is a skip.
func Missing(t testing.TB, what, install string) {
	t.Helper()
	msg := fmt.Sprintf("%s is not installed; install it with: %s (or run testenv/install.sh as root)", what, install)
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatalf("%s [CI=true: missing parts fail instead of skipping]", msg)
		return
	}
	t.Skip(msg)
}

// FreePort returns a port on host that was free a moment ago, for "tcp" or "udp".
func FreePort(t testing.TB, network, host string) int {
	t.Helper()
	port, err := freePort(network, host)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return port
}

func freePort(network, host string) (int, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
		l, err := net.Listen(network, net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, fmt.Errorf("free %s port on %s: %w", network, host, err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port, nil
	case "udp", "udp4", "udp6":
		c, err := net.ListenPacket(network, net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, fmt.Errorf("free %s port on %s: %w", network, host, err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port, nil
	}
	return 0, fmt.Errorf("free port: unknown network %q (want tcp or udp)", network)
}

// freePortBoth returns a port free for both TCP and UDP on host, for SIP which listens on both.
func freePortBoth(host string) (int, error) {
	var lastErr error
	for range 20 {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, fmt.Errorf("free tcp+udp port on %s: %w", host, err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		c, err := net.ListenPacket("udp", net.JoinHostPort(host, strconv.Itoa(port)))
		l.Close()
		if err == nil {
			c.Close()
			return port, nil
		}
		lastErr = err
	}
	return 0, fmt.Errorf("no port free for both tcp and udp on %s: %w", host, lastErr)
}

// freePorts returns n distinct free ports of one network on host.
func freePorts(network, host string, n int) ([]int, error) {
	seen := make(map[int]bool)
	ports := make([]int, 0, n)
	for len(ports) < n {
		p, err := freePort(network, host)
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			ports = append(ports, p)
		}
	}
	return ports, nil
}
