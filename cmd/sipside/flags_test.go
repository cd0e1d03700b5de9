package main

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/sipside/sipside/testenv"
)

func TestSplitArgs(t *testing.T) {
	fs := newFlagSet("test")
	fs.String("t", "", "")
	fs.Duration("timeout", 0, "")
	fs.Bool("int", false, "")
	tests := []struct {
		args       []string
		flags, pos []string
	}{
		{args: []string{"ps", "-t", "X"}, flags: []string{"-t", "X"}, pos: []string{"ps"}},
		{args: []string{"-t", "X", "ps", "a", "--timeout=2s"}, flags: []string{"-t", "X", "--timeout=2s"}, pos: []string{"ps", "a"}},
		{args: []string{"set", "--int", "t", "k", "5"}, flags: []string{"--int"}, pos: []string{"set", "t", "k", "5"}},
		{args: []string{"version", "--", "-t", "X"}, flags: nil, pos: []string{"version", "-t", "X"}},
		{args: []string{"-t", "--", "ps"}, flags: []string{"-t", "--"}, pos: []string{"ps"}},
		{args: []string{"log_level", "-1", "-"}, flags: nil, pos: []string{"log_level", "-1", "-"}},
		{args: []string{"ps", "--nope", "v"}, flags: []string{"--nope"}, pos: []string{"ps", "v"}},
		{args: []string{"ps", "-t"}, flags: []string{"-t"}, pos: []string{"ps"}},
	}
	for _, tc := range tests {
		flags, pos := splitArgs(fs, tc.args)
		if !reflect.DeepEqual(flags, tc.flags) || !reflect.DeepEqual(pos, tc.pos) {
			t.Errorf("%q: flags %q pos %q, want %q %q", tc.args, flags, pos, tc.flags, tc.pos)
		}
	}
}

// runCmd runs a command line in-process with stdout and stderr apart.
func runCmd(ctx context.Context, args ...string) (code int, stdout, stderr string) {
	var out, errb lockedBuffer
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	code = dispatch(ctx, e, args)
	return code, out.String(), errb.String()
}

// Help asked for goes to stdout with exit 0, in every subcommand, with the
// flags written as the examples write them; a usage error goes to stderr
// with exit 2 and the Usage line.
func TestHelpAndUsageStreams(t *testing.T) {
	longFlag := regexp.MustCompile(`(?m)^  --[a-z][a-z-]+`)
	singleDashLong := regexp.MustCompile(`(?m)^  -[a-z][a-z-]+`)
	cmds := []string{"", "events status"}
	for _, c := range commands() {
		cmds = append(cmds, c.name)
	}
	for _, c := range cmds {
		name := strings.TrimSpace("sipside " + c)
		words := strings.Fields(c)
		for _, h := range []string{"--help", "-h"} {
			code, stdout, stderr := runCmd(t.Context(), append(words, h)...)
			if code != exitOK || stderr != "" || !strings.HasPrefix(stdout, "Usage: "+name) {
				t.Errorf("%s %s: exit %d, stdout %.60q, stderr %q; want exit 0 and the help on stdout only", name, h, code, stdout, stderr)
			}
			if singleDashLong.MatchString(stdout) {
				t.Errorf("%s %s: a long flag shown with one dash:\n%s", name, h, stdout)
			}
			if c != "" && c != "version" && !longFlag.MatchString(stdout) && !strings.Contains(stdout, "\n  -c FILE") {
				t.Errorf("%s %s: no flags listed:\n%s", name, h, stdout)
			}
		}
		code, stdout, stderr := runCmd(t.Context(), append(words, "--no-such-flag")...)
		if code != exitUsage || stdout != "" || !strings.Contains(stderr, "no-such-flag") || !strings.Contains(stderr, "Usage: "+name) {
			t.Errorf("%s --no-such-flag: exit %d, stdout %q, stderr %q; want exit 2, the error and the Usage line on stderr only", name, code, stdout, stderr)
		}
	}
	if code, stdout, _ := runCmd(t.Context(), "help", "mi"); code != exitOK || !strings.HasPrefix(stdout, "Usage: sipside mi") {
		t.Errorf("sipside help mi: exit %d, stdout %.60q", code, stdout)
	}
	if code, stdout, stderr := runCmd(t.Context()); code != exitUsage || stdout != "" || !strings.Contains(stderr, "Usage: sipside COMMAND") {
		t.Errorf("sipside alone: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// Positional arguments a command does not take are a usage error, not ignored.
func TestExtraArgumentsAreUsageErrors(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(cfg, []byte("[log]\nlevel = \"warn\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Cancelled: a command that wrongly accepts the line returns at once instead of running.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, args := range [][]string{
		{"version", "x"},
		{"check", cfg, "extra"},
		{"check", "-c", cfg, cfg},
		{"run", cfg, "extra"},
		{"events", "--listen", "udp:127.0.0.1:" + strconv.Itoa(testenv.FreePort(t, "udp", "127.0.0.1")), "foo", "bar"},
		{"events", "status", "x"},
		{"bench", "x"},
		{"amqp", "publish", "x", "--routing-key", "k", "--payload", "{}"},
		{"dmq", "nodes", "x", "--listen", "sip:127.0.0.1:5090", "--seed", "sip:127.0.0.2:5060"},
	} {
		code, stdout, stderr := runCmd(ctx, args...)
		if code != exitUsage || stdout != "" || !strings.Contains(stderr, "Usage: sipside "+args[0]) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 2 and a usage error", args, code, stdout, stderr)
		}
	}
}

// Flags after positional arguments are flags (GNU style) in every
// subcommand; "--" ends them.
func TestFlagsAfterArguments(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{})
	target := o.Target("udp")
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[log]\nlevel = \"loud\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string // part of
		stderr string // part of
	}{
		// Today's bug: ["-t", X] were sent as parameters of ps to the default target.
		{name: "mi flag after method", args: []string{"mi", "ps", "-t", target}, stdout: `"Processes"`},
		{name: "mi flag between params", args: []string{"mi", "which", "-t", target, "command=version"}, stdout: `"revision"`},
		{name: "mi -- ends flags", args: []string{"mi", "-t", target, "version", "--", "-t", "x"}, code: exitFailure, stderr: "Too few or too many parameters"},
		{name: "amqp flags before the action", args: []string{"amqp", "--routing-key", "k", "--broker", "http://x/", "publish", "--payload", "{}"}, code: exitUsage, stderr: "AMQP scheme must be"},
		{name: "dmq flags after the arguments", args: []string{"dmq", "htable", "get", "repl", "k1", "--listen", "127.0.0.1:5090", "--seed", "sip:127.0.0.2:5060"}, code: exitUsage, stderr: "sip: scheme"},
		{name: "check file then flag", args: []string{"check", bad, "-c"}, code: exitUsage, stderr: "flag needs an argument: -c"},
		{name: "run takes FILE like check", args: []string{"run", bad}, code: exitFailure, stderr: `bad.toml:2: log.level: "loud"`},
		{name: "run FILE with flags after it", args: []string{"run", bad, "--log-format", "json"}, code: exitFailure, stderr: `bad.toml:2: log.level: "loud"`},
		{name: "check FILE", args: []string{"check", bad}, code: exitFailure, stderr: `bad.toml:2: log.level: "loud"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t.Context(), tc.args...)
			if code != tc.code || !strings.Contains(stdout, tc.stdout) || !strings.Contains(stderr, tc.stderr) {
				t.Errorf("%q: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant stdout with %q, stderr with %q", tc.args, code, tc.code, stdout, stderr, tc.stdout, tc.stderr)
			}
		})
	}
}
