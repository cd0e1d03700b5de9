package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

// TestExitCodes holds every command to the one meaning of the exit codes:
// 0 success, 1 the operation failed (an error answer, an invalid config, a
// message nacked or unroutable), 2 bad usage or the peer could not be reached.
// The cases that need a RabbitMQ or a Kamailio node are in TestAMQPPublishQueryConsume
// (unroutable: 1) and TestDMQAgainstKamailio (missing cell: 1).
func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.toml", fmt.Sprintf("[http]\nlisten = \"off\"\n[[input]]\nlisten = \"udp:127.0.0.1:%d\"\n", testenv.FreePort(t, "udp", "127.0.0.1")))
	bad := write("bad.toml", "[log]\nlevel = \"loud\"\n")

	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{})
	target := o.Target("udp")

	// Addresses where nobody answers: a bound socket that is then closed.
	freeUDP := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t, "udp", "127.0.0.1"))
	freeTCP := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t, "tcp", "127.0.0.1"))
	// An address in use, for inputs that cannot open.
	busy, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	// A daemon's status endpoint, healthy and broken.
	srv := func(code int) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(code)
			fmt.Fprint(w, `{"version":"test"}`)
		})}
		go s.Serve(l)
		t.Cleanup(func() { s.Close() })
		return l.Addr().String()
	}
	okStatus, brokenStatus := srv(http.StatusOK), srv(http.StatusInternalServerError)

	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string // part of
	}{
		{"version", []string{"version"}, exitOK, ""},
		{"version usage", []string{"version", "x"}, exitUsage, "unexpected argument"},

		{"check good", []string{"check", good}, exitOK, ""},
		{"check invalid config", []string{"check", bad}, exitFailure, "log.level"},
		{"check missing file", []string{"check", filepath.Join(dir, "missing.toml")}, exitFailure, "no such file"},
		{"check usage", []string{"check", "-x"}, exitUsage, "flag provided but not defined"},

		{"run invalid config", []string{"run", "-c", bad}, exitFailure, "log.level"},
		{"run usage", []string{"run", "--log-level"}, exitUsage, "flag needs an argument"},

		{"mi ok", []string{"mi", "-t", target, "version"}, exitOK, ""},
		{"mi error answer", []string{"mi", "-t", target, "no_such_cmd"}, exitFailure, "Method not found"},
		{"mi invalid config", []string{"mi", "-c", bad, "version"}, exitFailure, "log.level"},
		{"mi unreachable", []string{"mi", "-t", "opensips:udp:" + freeUDP, "version"}, exitUsage, "connection refused"},
		{"mi usage", []string{"mi", "-t", target}, exitUsage, "no METHOD given"},

		{"events input cannot open", []string{"events", "--listen", "udp:" + busy.LocalAddr().String()}, exitFailure, "address already in use"},
		{"events bad socket string", []string{"events", "--to", "bogus:x"}, exitUsage, "bogus"},

		{"events status ok", []string{"events", "status", "--http", okStatus}, exitOK, ""},
		{"events status error answer", []string{"events", "status", "--http", brokenStatus}, exitFailure, "500"},
		{"events status invalid config", []string{"events", "status", "-c", bad}, exitFailure, "log.level"},
		{"events status unreachable", []string{"events", "status", "--http", freeTCP}, exitUsage, "connection refused"},

		{"dmq usage", []string{"dmq", "nodes"}, exitUsage, "give --listen"},
		{"dmq nobody answers the join", []string{"dmq", "nodes", "--listen", "sip:" + "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t, "udp", "127.0.0.1")),
			"--seed", "sip:" + freeUDP, "--wait", "300ms"}, exitUsage, "no node answered"},

		{"amqp usage", []string{"amqp", "publish", "--payload", "{}"}, exitUsage, "--routing-key is required"},
		{"amqp publish refused", []string{"amqp", "publish", "--broker", "amqp://guest:guest@" + freeTCP + "/", "--routing-key", "k", "--payload", "{}"}, exitUsage, "connection refused"},
		{"amqp query refused", []string{"amqp", "query", "--broker", "amqp://guest:guest@" + freeTCP + "/", "--routing-key", "k", "--payload", "{}"}, exitUsage, "connection refused"},
		{"amqp consume refused", []string{"amqp", "consume", "--broker", "amqp://guest:guest@" + freeTCP + "/", "--exchange", "x", "--timeout", "300ms"}, exitUsage, "connection refused"},

		{"bench usage", []string{"bench", "--events", "0"}, exitUsage, "want at least 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			code, stdout, stderr := runCmd(ctx, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.stderr) {
				t.Errorf("%q: exit %d, want %d\nstdout: %s\nstderr: %s\nwant stderr with %q", tc.args, code, tc.code, stdout, stderr, tc.stderr)
			}
		})
	}
}

// A daemon that stops on a signal exits 0, in-process here: the context is the
// signal.
func TestRunStopsWithZero(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "c.toml")
	input := "udp:127.0.0.1:" + strconv.Itoa(testenv.FreePort(t, "udp", "127.0.0.1"))
	if err := os.WriteFile(cfg, []byte("[http]\nlisten = \"off\"\n[[input]]\nlisten = \""+input+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"run", cfg}, {"events", "--listen", input}} {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if code, stdout, stderr := runCmd(ctx, args...); code != exitOK {
			t.Errorf("%q: exit %d\nstdout: %s\nstderr: %s", args, code, stdout, stderr)
		}
	}
}
