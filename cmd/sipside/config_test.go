package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name string
		src  string
		err  string // substring; "" = valid
	}{
		{"empty file gets every default", "", ""},
		{"log only", "[log]\nlevel = \"debug\"\nformat = \"json\"\n", ""},
		{"full", "[[input]]\nlisten = \"udp:127.0.0.1:9\"\n[[route]]\nevents=[\"E_UL_*\"]\nto = \"virtual:ROUND-ROBIN udp:127.0.0.1:1 unix:/tmp/x.sock\"\nfailover_timeout = \"5s\"\n", ""},
		{"http off", "[http]\nlisten = \"off\"\n", ""},
		{"syntax", "[log\nlevel = 1\n", ":2: expected '.' or ']'"},
		{"unknown top key", "colour = \"blue\"\n", `:1: colour: unknown key`},
		{"unknown key in table", "[log]\nlevel = \"info\"\ncolour = \"blue\"\n", `:3: log.colour: unknown key`},
		{"unknown key in array table", "[[route]]\nto = \"stdout:\"\nqueu = 5\n", `:3: route[0].queu: unknown key`},
		{"bad level", "[log]\nlevel = \"loud\"\n", `:2: log.level: "loud": want debug, info, warn or error`},
		{"bad format", "[log]\nformat = \"xml\"\n", `log.format: "xml": want text or json`},
		{"bad http", "[http]\nlisten = \"9690\"\n", `http.listen`},
		{"bad mi target", "[mi]\ntarget = \"udp:127.0.0.1:8080\"\n", `mi.target`},
		{"wrong type", "[[route]]\nto = \"stdout:\"\nqueue = \"big\"\n", `:3: route[0].queue: "big": want a whole number, without quotes`},
		{"bad duration", "[[route]]\nto = \"stdout:\"\ntimeout = \"soon\"\n", `:3: route[0].timeout: "soon" is not a duration`},
		{"bad input", "[[input]]\nlisten = \"udp:127.0.0.1\"\n", `:2: input[0].listen:`},
		{"unknown input proto", "[[input]]\nlisten = \"sctp:127.0.0.1:1\"\n", `unknown protocol "sctp"`},
		{"input twice", "[[input]]\nlisten = \"udp:127.0.0.1:1\"\n[[input]]\nlisten = \"udp:127.0.0.1:1\"\n", `:4: input[1].listen: "udp:127.0.0.1:1" is listed twice`},
		{"bad socket in second route", "[[route]]\nto = \"stdout:\"\n[[route]]\nevents = [\"E\"]\nto = \"virtual:failover udp:127.0.0.1:1\"\n", `:5: route[1].to:`},
		{"bad glob", "[[route]]\nevents = [\"E_[\"]\nto = \"stdout:\"\n", `:2: route[0].events:`},
		{"empty to", "[[route]]\nevents = [\"E\"]\n", `route[0].to`},
		// Route memory is bounded by config: a queue of 200 million events
		// cost 1.58 GB at start, 130 k routes 11 GB after a SIGHUP.
		{"queue at the maximum", "[[route]]\nto = \"stdout:\"\nqueue = 1000000\n", ""},
		{"queue over the maximum", "[[route]]\nto = \"stdout:\"\nqueue = 200000000\n", `:3: route[0].queue: 200000000: want 1 to 1000000 events`},
		{"window over the maximum", "[[route]]\nto = \"stdout:\"\nwindow = 1000000\n", `:3: route[0].window: 1000000: want 1 to 10000`},
		{"routes at the maximum", strings.Repeat("[[route]]\nto = \"stdout:\"\n", 1000), ""},
		{"routes over the maximum", strings.Repeat("[[route]]\nto = \"stdout:\"\n", 1001), `:2001: route[1000]: 1001 routes: at most 1000`},
		{"spool", "[spool]\ndir = \"/tmp/sipside-spool-test\"\nmax_bytes = 1048576\nfsync = \"always\"\non_full = \"drop_newest\"\nsegment_bytes = 65536\n", ""},
		{"spool bad fsync", "[spool]\ndir = \"/tmp/x\"\nfsync = \"sometimes\"\n", `:3: spool.fsync: "sometimes": want always, interval or never`},
		{"spool relative dir", "[spool]\ndir = \"spool\"\n", `:2: spool.dir:`},
		{"dmq", "[dmq]\nlisten = \"sip:127.0.0.1:5090\"\nseeds = [\"sip:127.0.0.2:5060\"]\nping_interval = \"10s\"\npeers = [\"htable\", \"usrloc\"]\n", ""},
		{"dmq without seeds", "[dmq]\nlisten = \"sip:127.0.0.1:5090\"\n", `dmq.seeds: name at least one`},
		{"dmq host name", "[dmq]\nlisten = \"sip:localhost:5090\"\nseeds = [\"sip:127.0.0.2:5060\"]\n", `:2: dmq.listen: "sip:localhost:5090": use an IPv4 address`},
		{"dmq route", "[dmq]\nlisten = \"sip:127.0.0.1:5090\"\nseeds = [\"sip:127.0.0.2:5060\"]\necho = true\n[[route]]\nevents = [\"E_PIKE_BLOCKED\"]\nto = \"dmq:htable:repl?key={ip}&value=1&expire=600\"\n", ""},
		{"dmq route without [dmq]", "[[route]]\nevents = [\"E_PIKE_BLOCKED\"]\nto = \"virtual:FAILOVER dmq:htable:repl?key={ip}&value=1 stdout:\"\n", `:3: route[0].to: dmq:htable writes through sipside's DMQ node: configure [dmq] listen and seeds`},
		{"dmq route without its peer", "[dmq]\nlisten = \"sip:127.0.0.1:5090\"\nseeds = [\"sip:127.0.0.2:5060\"]\npeers = [\"htable\"]\n[[route]]\nto = \"dmq:usrloc?aor={aor}&contact={uri}\"\n", `:6: route[0].to: dmq:usrloc needs the usrloc peer: add "usrloc" to [dmq] peers`},
		{"dmq route bad template", "[dmq]\nlisten = \"sip:127.0.0.1:5090\"\nseeds = [\"sip:127.0.0.2:5060\"]\n[[route]]\nto = \"dmq:htable:repl?key={ip\"\n", `:5: route[0].to: socket "dmq:htable:repl?key={ip": dmq:htable: key: "{ip": unclosed {`},
		{"amqp", "[amqp]\nbrokers = [\"amqp://guest:guest@127.0.0.1:5672/\"]\n[jsonrpc]\nlisten = [\"tcp:127.0.0.1:8095\"]\n[[amqp.consume]]\nexchange = \"callmgr\"\nrouting_key = \"route.req.#\"\nack = \"delivered\"\ndeliver = \"opensips:udp:127.0.0.1:8080\"\nevent = \"E_AMQP_ROUTE_REQ\"\n", ""},
		{"amqp bad ack", "[amqp]\nbrokers = [\"amqp://127.0.0.1/\"]\n[[amqp.consume]]\nexchange = \"x\"\nrouting_key = \"k\"\nack = \"sometimes\"\ndeliver = \"events\"\nevent = \"E\"\n", `:6: amqp.consume[0].ack:`},
		{"jsonrpc without brokers", "[jsonrpc]\nlisten = [\"tcp:127.0.0.1:8095\"]\n", `amqp.brokers: empty`},
		{"subscribe", "[[input]]\nlisten = \"udp:127.0.0.1:8090\"\n[[subscribe]]\ntarget = \"opensips:udp:127.0.0.1:8080\"\nevents = [\"E_UL_CONTACT_INSERT\"]\nsocket = \"udp:127.0.0.1:8090\"\nexpire = 120\n", ""},
		{"subscribe socket nobody listens on", "[[subscribe]]\ntarget = \"opensips:udp:127.0.0.1:8080\"\nevents = [\"E_X\"]\nsocket = \"udp:127.0.0.1:9999\"\n", `:4: subscribe[0].socket: "udp:127.0.0.1:9999" is not one of sipside's [[input]]`},
		{"subscribe kamailio", "[[subscribe]]\ntarget = \"kamailio:udp:127.0.0.1:8080\"\nevents = [\"E_X\"]\nsocket = \"udp:127.0.0.1:8090\"\n", `:2: subscribe[0].target:`},
		// Every problem at once, sorted by line, each at its own key: window
		// was reported at the route's to line, a bad duration without its key.
		{"window negative at its own line", "[[route]]\nto = \"stdout:\"\nwindow = -5\n", `test.toml:3: route[0].window: -5: want 1 to 10000 events in flight`},
		{"negative durations and sizes", "shutdown_timeout = \"-1s\"\n[spool]\ndir = \"/tmp/x\"\nmax_bytes = -1\nretry_interval = \"-2s\"\n",
			"test.toml:1: shutdown_timeout: -1s: must not be negative (default 4s)\ntest.toml:4: spool.max_bytes: -1: must not be negative\ntest.toml:5: spool.retry_interval: -2s: must not be negative"},
		{"every type error at once", "shutdown_timeout = 5\n[log]\nlevel = 3\n[[route]]\nto = \"stdout:\"\nqueue = \"10\"\ntimeout = \"soon\"\n",
			"test.toml:1: shutdown_timeout: 5: want a string, e.g. \"500ms\" or \"30s\"\ntest.toml:3: log.level: 3: want a string (in quotes)\ntest.toml:6: route[0].queue: \"10\": want a whole number, without quotes\ntest.toml:7: route[0].timeout: \"soon\" is not a duration"},
		{"every value error at once", "[log]\nlevel = \"loud\"\n[[route]]\nto = \"stdout:\"\nwindow = -5\n[[route]]\nto = \"virtual:failover udp:127.0.0.1:1\"\n[spool]\nfsync = \"sometimes\"\n",
			"test.toml:2: log.level: \"loud\": want debug, info, warn or error\ntest.toml:5: route[0].window: -5: want 1 to 10000 events in flight\ntest.toml:7: route[1].to: "},
		{"unknown keys all reported", "colour = 1\n[[route]]\nto = \"stdout:\"\n[[route]]\nto = \"stdout:\"\nqueu = 1\n",
			"test.toml:1: colour: unknown key (contrib/sipside.toml lists every key that exists)\ntest.toml:6: route[1].queu: unknown key"},
		{"subscribe glob", "[[subscribe]]\ntarget = \"opensips:udp:127.0.0.1:8080\"\nevents = [\"E_*\"]\nsocket = \"udp:127.0.0.1:8090\"\n", `:3: subscribe[0].events:`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseConfig("test.toml", tt.src)
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if len(cfg.Input) == 0 || len(cfg.Route) == 0 || cfg.HTTP.Listen == "" || cfg.MI.Target == "" {
					t.Errorf("defaults missing: %+v", cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.err)
			}
			if !strings.HasPrefix(err.Error(), "test.toml") {
				t.Errorf("error does not name the file: %v", err)
			}
		})
	}
}

func TestEmbeddedDefault(t *testing.T) {
	cfg, err := loadConfigFile("")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Input[0].Listen != "udp:127.0.0.1:8090" || cfg.Route[0].To != "stdout:" || cfg.HTTP.Listen != "127.0.0.1:9690" {
		t.Errorf("embedded default = %+v", cfg)
	}
}

// Every example config in contrib/ must stay valid.
func TestContribConfigs(t *testing.T) {
	files, _ := filepath.Glob("../../contrib/*.toml")
	more, _ := filepath.Glob("../../contrib/*/*.toml")
	files = append(files, more...)
	if len(files) == 0 {
		t.Fatal("no contrib/*.toml")
	}
	for _, f := range files {
		if _, err := loadConfigFile(f); err != nil {
			t.Errorf("%v", err)
		}
	}
}

func TestCheckCommand(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(good, []byte("[log]\nlevel = \"warn\"\n"), 0o644)
	os.WriteFile(bad, []byte("[log]\nlevel = \"loud\"\n"), 0o644)
	for _, tt := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"-c", good}, exitOK, "ok (1 inputs, 1 routes)"},
		{[]string{good}, exitOK, "ok"},
		{[]string{"-c", bad}, exitFailure, `bad.toml:2: log.level: "loud"`},
		{[]string{"-c", filepath.Join(dir, "missing.toml")}, exitFailure, "no such file"},
		{[]string{"--help"}, exitOK, "Usage: sipside check"},
	} {
		e, out := testEnv()
		if code := dispatch(t.Context(), e, append([]string{"check"}, tt.args...)); code != tt.code {
			t.Errorf("check %v: exit %d, want %d\n%s", tt.args, code, tt.code, out)
		}
		if !strings.Contains(out.String(), tt.out) {
			t.Errorf("check %v: output %q lacks %q", tt.args, out, tt.out)
		}
	}
}

func TestEverySubcommandHasHelp(t *testing.T) {
	for _, c := range commands() {
		e, out := testEnv()
		code := dispatch(t.Context(), e, []string{c.name, "--help"})
		if code != exitOK {
			t.Errorf("%s --help: exit %d", c.name, code)
		}
		if !strings.Contains(out.String(), "Usage: sipside "+c.name) || !strings.Contains(out.String(), "Example") {
			t.Errorf("%s --help lacks usage or an example:\n%s", c.name, out)
		}
	}
	e, _ := testEnv()
	if code := dispatch(t.Context(), e, []string{"frobnicate"}); code != exitUsage {
		t.Errorf("unknown command: exit %d", code)
	}
}

func TestBenchCommand(t *testing.T) {
	e, out := testEnv()
	if code := dispatch(t.Context(), e, []string{"bench", "--events", "2000"}); code != exitOK {
		t.Fatalf("bench: exit %d\n%s", code, out)
	}
	for _, want := range []string{"udp read only (baseline)", "udp -> stdout:", "events/s"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("bench output lacks %q:\n%s", want, out)
		}
	}
	e, out = testEnv()
	if code := dispatch(t.Context(), e, []string{"bench", "--events", "10", "--to", "udp:nowhere"}); code != exitFailure || !strings.Contains(out.String(), "udp:nowhere") {
		t.Errorf("bench with a bad socket: exit %d\n%s", code, out)
	}
}

// check passes only what run starts: what run would refuse on this machine
// is reported by check too, each problem at its line.
func TestCheckMatchesRun(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	os.WriteFile(blocker, nil, 0o644)
	for _, tc := range []struct {
		name, src, want string
	}{
		{"unix socket in a missing directory", "[[input]]\nlisten = \"unix:" + dir + "/no/such/dir/events.sock\"\n",
			":2: input[0].listen: the socket's directory " + dir + "/no/such/dir: no such file or directory (create it first)"},
		{"address no interface has", "[[input]]\nlisten = \"udp:192.0.2.7:8090\"\n",
			":2: input[0].listen: 192.0.2.7:8090: no interface of this machine has that address"},
		{"spool under a file", "[spool]\ndir = \"" + blocker + "/spool\"\n", ":2: spool.dir: " + blocker + "/spool: " + blocker + " is not a directory"},
		{"http address no interface has", "[http]\nlisten = \"192.0.2.7:9690\"\n", ":2: http.listen: 192.0.2.7:9690: no interface"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sipside.toml")
			if strings.HasPrefix(tc.src, "[http]") {
				os.WriteFile(path, []byte(tc.src), 0o644)
			} else {
				// Line numbers of want count from the case's own text.
				os.WriteFile(path, []byte(tc.src+"[http]\nlisten = \"off\"\n"), 0o644)
			}
			for _, cmd := range []string{"check", "run"} {
				e, out := testEnv()
				if code := dispatch(t.Context(), e, []string{cmd, "-c", path}); code != exitFailure || !strings.Contains(out.String(), path+tc.want) {
					t.Errorf("sipside %s: exit %d, want 1 and %q in:\n%s", cmd, code, tc.want, out)
				}
			}
		})
	}
	// An address in use is fine for check: the daemon being checked holds it.
	busy, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	path := filepath.Join(t.TempDir(), "sipside.toml")
	os.WriteFile(path, []byte("[[input]]\nlisten = \"udp:"+busy.LocalAddr().String()+"\"\n[http]\nlisten = \"off\"\n"), 0o644)
	e, out := testEnv()
	if code := dispatch(t.Context(), e, []string{"check", "-c", path}); code != exitOK {
		t.Errorf("check of a config whose address is in use: exit %d\n%s", code, out)
	}
}
