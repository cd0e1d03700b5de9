package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sipside/sipside/mi"
	"github.com/sipside/sipside/testenv"
)

func TestMIParams(t *testing.T) {
	tests := []struct {
		args    []string
		want    any
		wantErr string
	}{
		{args: nil, want: nil},
		{args: []string{"E_MY_EVENT", "udp:127.0.0.1:9000", "120"}, want: []any{"E_MY_EVENT", "udp:127.0.0.1:9000", json.Number("120")}},
		{args: []string{"event=E_PIKE_BLOCKED", "socket=udp:127.0.0.1:8090", "expire=120"}, want: mi.Named{{Name: "event", Value: "E_PIKE_BLOCKED"}, {Name: "socket", Value: "udp:127.0.0.1:8090"}, {Name: "expire", Value: json.Number("120")}}},
		{args: []string{`expire="120"`, `n=-3`, `z=007`, `big=12345678901`}, want: mi.Named{{Name: "expire", Value: "120"}, {Name: "n", Value: json.Number("-3")}, {Name: "z", Value: "007"}, {Name: "big", Value: "12345678901"}}},
		{args: []string{`event=E`, `params:=["a","b"]`}, want: mi.Named{{Name: "event", Value: "E"}, {Name: "params", Value: json.RawMessage(`["a","b"]`)}}},
		{args: []string{`E`, `:={"k":1}`}, want: []any{"E", json.RawMessage(`{"k":1}`)}},
		{args: []string{"a=b=c"}, want: mi.Named{{Name: "a", Value: "b=c"}}},
		{args: []string{"=x", "k v=1"}, want: []any{"=x", "k v=1"}},
		{args: []string{"a=1", "b"}, wantErr: "mix of named"},
		{args: []string{"p:=[1,"}, wantErr: "not valid JSON"},
	}
	for _, tc := range tests {
		got, err := miParams(tc.args)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err = %v, want %q", tc.args, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q:\n got %#v\nwant %#v", tc.args, got, tc.want)
		}
	}
}

var ttlValue = regexp.MustCompile(`"ttl": 1[01]\d`)

func runMI(t *testing.T, environ map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb lockedBuffer
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(k string) string { return environ[k] }}
	code = cmdMI(context.Background(), e, args)
	return code, out.String(), errb.String()
}

func TestCmdMIOpenSIPS(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{Events: []string{"E_PIKE_BLOCKED"}})
	target := o.Target("udp")
	// what the running OpenSIPS calls itself (the emulator's 3.6.8, or OPENSIPS_BIN's build)
	versionOut := "{\n  \"Server\": \"" + o.Version() + "\"\n}\n"
	closed := func() string {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}()
	cfg := filepath.Join(t.TempDir(), "sipside.toml")
	if err := os.WriteFile(cfg, []byte("[mi]\ntarget = \""+target+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		env        map[string]string
		args       []string
		code       int
		stdout     string // exact
		stderrPart string
	}{
		{name: "version", args: []string{"-t", target, "version"}, stdout: versionOut},
		{name: "named subscribe", args: []string{"-t", target, "event_subscribe", "event=E_PIKE_BLOCKED", "socket=udp:127.0.0.1:8090", "expire=120"}, stdout: "\"OK\"\n"},
		{name: "target from SIPSIDE_MI", env: map[string]string{"SIPSIDE_MI": target}, args: []string{"subscribers_list", "E_PIKE_BLOCKED", "udp:127.0.0.1:8090"}, stdout: "{\n  \"Event\": {\n    \"name\": \"E_PIKE_BLOCKED\",\n    \"id\": " + strconv.Itoa(o.EventIDs()["E_PIKE_BLOCKED"]) + ",\n    \"Subscriber\": {\n      \"socket\": \"udp:127.0.0.1:8090\",\n      \"expire\": 120,\n      \"ttl\": 120\n    }\n  }\n}\n"},
		{name: "target from config", args: []string{"-c", cfg, "--params", `["E_PIKE_BLOCKED","udp:127.0.0.1:8090",0]`, "event_subscribe"}, stdout: "\"OK\"\n"},
		{name: "-t beats SIPSIDE_MI", env: map[string]string{"SIPSIDE_MI": "opensips:udp:" + closed}, args: []string{"-t", target, "version"}, stdout: versionOut},
		{name: "proxy error", args: []string{"-t", target, "no_such_cmd"}, code: 1, stderrPart: "sipside mi: no_such_cmd: -32601 Method not found"},
		{name: "proxy error with data", args: []string{"-t", target, "version", "x", "y"}, code: 1, stderrPart: "version: -32602 Invalid params: Too few or too many parameters"},
		{name: "quoted number is a string", args: []string{"-t", target, "event_subscribe", "E_PIKE_BLOCKED", "udp:127.0.0.1:8091", `"-5"`}, code: 1, stderrPart: "Negative expire value"},
		{name: "nobody there", args: []string{"-t", "opensips:udp:" + closed, "version"}, code: 2, stderrPart: "connection refused by " + closed},
		{name: "bad target", args: []string{"-t", "opensips:tcp:1.2.3.4:5", "version"}, code: 2, stderrPart: `unknown transport "tcp"`},
		{name: "no method", args: []string{"-t", target}, code: 2, stderrPart: "no METHOD given"},
		{name: "mixed params", args: []string{"-t", target, "event_subscribe", "E", "socket=x"}, code: 2, stderrPart: "mix of named"},
		{name: "params twice", args: []string{"-t", target, "--params", "[]", "version", "x"}, code: 2, stderrPart: "not both"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runMI(t, tc.env, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout, stderr)
			}
			// ttl counts down in whole seconds while the test runs
			stdout = ttlValue.ReplaceAllString(stdout, `"ttl": 120`)
			if tc.code == 0 && tc.stdout != "" && stdout != tc.stdout {
				t.Errorf("stdout:\n%s\nwant:\n%s", stdout, tc.stdout)
			}
			if !strings.Contains(stderr, tc.stderrPart) {
				t.Errorf("stderr %q, want it to contain %q", stderr, tc.stderrPart)
			}
		})
	}
}

func TestCmdMIKamailio(t *testing.T) {
	k := testenv.NewKamailio(t, testenv.KamailioConfig{Name: "cmdmi"})
	version, err := k.Version(context.Background())
	if err != nil {
		t.Fatalf("testenv core.version: %v", err)
	}
	for _, target := range []string{k.MITargetHTTP(), k.MITargetUDP(), k.MITargetFIFO()} {
		code, stdout, stderr := runMI(t, nil, "-t", target, "core.version")
		if code != 0 || stdout != version+"\n" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", target, code, stdout, stderr)
		}
		code, _, stderr = runMI(t, nil, "-t", target, "htable.get", "t", "nosuchkey")
		if code != 1 || !strings.Contains(stderr, "htable.get: 500 Key name doesn't exist in htable.") {
			t.Errorf("%s: exit %d, stderr %q", target, code, stderr)
		}
	}
}

// BenchmarkProcessCoreVersion times one core.version per process, the way an operator
// or a script runs it: sipside mi over each transport, kamcmd (binrpc over ctl) and
// kamctl rpc (jsonrpcs FIFO from a shell script). Run it as
//
//	go test -run XXX -bench ProcessCoreVersion -benchtime 200x ./cmd/sipside
//
// for 200 calls of each; it reports the median and p90 wall time per call.
func BenchmarkProcessCoreVersion(b *testing.B) {
	// kamctl makes its reply FIFO in /tmp and passes only the name
	tmpl := strings.Replace(testenv.DefaultKamailioTemplate, `"fifo_reply_dir", "{{.Dir}}/"`, `"fifo_reply_dir", "/tmp/"`, 1)
	k := testenv.NewKamailio(b, testenv.KamailioConfig{Name: "procbench", Template: tmpl})
	bin := filepath.Join(b.TempDir(), "sipside")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	// the floor for any Go process: a minimal static program doing one UDP exchange
	floorSrc := filepath.Join(b.TempDir(), "floor.go")
	floor := filepath.Join(b.TempDir(), "floor")
	if err := os.WriteFile(floorSrc, []byte(goFloorProgram), 0o644); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command("go", "build", "-o", floor, floorSrc).CombinedOutput(); err != nil {
		b.Fatalf("go build floor: %v\n%s", err, out)
	}
	// the running node's own answer, not a release pinned here (KAMAILIO_BIN may be any)
	kv, err := k.Version(context.Background())
	if err != nil {
		b.Fatalf("testenv core.version: %v", err)
	}
	release := strings.Fields(strings.Trim(kv, `"`))[1]
	tools := []struct {
		name string
		argv []string
		env  []string
	}{
		{"go-minimal-udp", []string{floor, strings.TrimPrefix(k.MITargetUDP(), "kamailio:udp:")}, nil},
		{"sipside-mi-udp", []string{bin, "mi", "-t", k.MITargetUDP(), "core.version"}, nil},
		{"sipside-mi-http", []string{bin, "mi", "-t", k.MITargetHTTP(), "core.version"}, nil},
		{"sipside-mi-fifo", []string{bin, "mi", "-t", k.MITargetFIFO(), "--reply-dir", "/tmp", "core.version"}, nil},
		{"kamcmd", []string{"kamcmd", "-s", "unix:" + k.CtlSock, "core.version"}, nil},
		{"kamctl-rpc", []string{"kamctl", "rpc", "core.version"}, []string{"RPCFIFOPATH=" + k.FIFO}},
	}
	for _, tool := range tools {
		b.Run(tool.name, func(b *testing.B) {
			if _, err := exec.LookPath(tool.argv[0]); err != nil {
				testenv.Missing(b, tool.argv[0], "apt-get install -y kamailio")
			}
			times := make([]time.Duration, 0, b.N)
			for range b.N {
				cmd := exec.Command(tool.argv[0], tool.argv[1:]...)
				cmd.Env = append(os.Environ(), tool.env...)
				t0 := time.Now()
				out, err := cmd.CombinedOutput()
				times = append(times, time.Since(t0))
				if err != nil || !strings.Contains(string(out), release) {
					b.Fatalf("%s: %v\n%s", strings.Join(tool.argv, " "), err, out)
				}
			}
			slices.Sort(times)
			b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "median-ms")
			b.ReportMetric(float64(times[len(times)*9/10].Microseconds())/1000, "p90-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

const goFloorProgram = `package main

import (
	"net"
	"os"
	"time"
)

func main() {
	c, err := net.Dial("udp", os.Args[1])
	if err != nil {
		os.Exit(2)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte(` + "`" + `{"jsonrpc":"2.0","method":"core.version","id":1}` + "`" + `))
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		os.Exit(2)
	}
	os.Stdout.Write(buf[:n])
}
`
