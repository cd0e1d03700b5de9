// Package contrib_test keeps the files in contrib/, docker-compose.yml and the
// Dockerfile honest: each test fails when one of them drifts from the code or
// from the others (a mounted file that moved, a port the image does not
// expose, a metric that was renamed, a proxy config the proxy refuses).
package contrib_test

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/sipside/sipside/dmq"
	"github.com/sipside/sipside/kazoo"
	"github.com/sipside/sipside/testenv"
)

// TestMain is testenv.Main plus removing the binary built for the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	testenv.Cleanup()
	os.Exit(code)
}

// root is the repository root; tests run in contrib/.
const root = ".."

func repoPath(p string) string { return filepath.Join(root, filepath.FromSlash(p)) }

// TestTopLevel keeps the repository's top level to what its layout promises
// (and catches a stray file committed from a test run).
func TestTopLevel(t *testing.T) {
	out, err := exec.Command("git", "-C", root, "ls-files").Output()
	if err != nil {
		t.Skipf("git ls-files: %v (not a git checkout?)", err)
	}
	allowed := map[string]bool{
		"cmd": true, "mi": true, "evi": true, "dmq": true, "kazoo": true, "contrib": true, "testenv": true,
		"internal": true, "go.mod": true, "go.sum": true, "docker-compose.yml": true,
		"README.md": true, "Makefile": true, ".ci": true, "LICENSE": true, ".gitignore": true, ".dockerignore": true,
	}
	seen := map[string]bool{}
	for _, f := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		top, _, _ := strings.Cut(f, "/")
		if !allowed[top] && !seen[top] {
			t.Errorf("%s at the top level: the layout is cmd/ mi/ evi/ dmq/ kazoo/ contrib/ testenv/ internal/ go.mod go.sum docker-compose.yml README.md Makefile .ci/ LICENSE", top)
		}
		seen[top] = true
	}
	for _, want := range []string{"cmd", "mi", "evi", "dmq", "kazoo", "contrib", "testenv", "go.mod", "go.sum", "docker-compose.yml", "README.md", "Makefile", ".ci", "LICENSE"} {
		if !seen[want] {
			t.Errorf("%s is missing from the top level", want)
		}
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(repoPath(p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ---------------------------------------------------------------------------
// docker-compose.yml

// labNet is the lab's network in docker-compose.yml: every address the
// contrib/lab configs write must belong to a service there.
var labAddrRe = regexp.MustCompile(`\b172\.28\.0\.\d{1,3}\b`)

func loadCompose(t *testing.T) map[string]any {
	t.Helper()
	v, err := parseYAML(readFile(t, "docker-compose.yml"))
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("docker-compose.yml: top level is %T, want a mapping", v)
	}
	return m
}

func TestComposeFile(t *testing.T) {
	c := loadCompose(t)
	for k := range c {
		if !slices.Contains([]string{"services", "networks", "volumes"}, k) && !strings.HasPrefix(k, "x-") {
			t.Errorf("top-level key %q: docker-compose 1.29 (the validator without an engine) refuses it", k)
		}
	}
	services := mapOf(c["services"])
	networks := mapOf(c["networks"])
	volumes := mapOf(c["volumes"])
	if len(services) == 0 {
		t.Fatal("no services")
	}
	for _, want := range []string{"rabbitmq", "opensips", "kamailio-a", "kamailio-b", "sipside"} {
		if services[want] == nil {
			t.Errorf("service %q missing", want)
		}
	}

	// Subnets of the declared networks.
	subnets := map[string]*net.IPNet{}
	for name, n := range networks {
		for _, cfg := range listOf(mapOf(mapOf(n)["ipam"])["config"]) {
			if s, ok := mapOf(cfg)["subnet"].(string); ok {
				_, ipn, err := net.ParseCIDR(s)
				if err != nil {
					t.Errorf("network %s: subnet %q: %v", name, s, err)
					continue
				}
				subnets[name] = ipn
			}
		}
	}

	addrs := map[string]string{}     // IP -> service
	hostPorts := map[string]string{} // host IP:port/proto -> service
	for name, sv := range services {
		s := mapOf(sv)
		img, _ := s["image"].(string)
		build := s["build"]
		if img == "" && build == nil {
			t.Errorf("service %s: neither image nor build", name)
		}
		if build != nil {
			ctx, dockerfile := ".", "Dockerfile"
			switch b := build.(type) {
			case string:
				ctx = b
			case map[string]any:
				if v, ok := b["context"].(string); ok {
					ctx = v
				}
				if v, ok := b["dockerfile"].(string); ok {
					dockerfile = v
				}
			}
			if st, err := os.Stat(repoPath(ctx)); err != nil || !st.IsDir() {
				t.Errorf("service %s: build context %q is not a directory", name, ctx)
			}
			if _, err := os.Stat(filepath.Join(repoPath(ctx), dockerfile)); err != nil {
				t.Errorf("service %s: dockerfile: %v", name, err)
			}
		}
		for _, v := range listOf(s["volumes"]) {
			spec, _ := v.(string)
			src, _, ok := strings.Cut(spec, ":")
			if !ok {
				t.Errorf("service %s: volume %q: want SRC:DST[:ro]", name, spec)
				continue
			}
			if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
				if _, err := os.Stat(repoPath(src)); err != nil {
					t.Errorf("service %s mounts %s: %v", name, src, err)
				}
			} else if _, ok := volumes[src]; !ok {
				t.Errorf("service %s: named volume %q is not declared under volumes:", name, src)
			}
		}
		nets := mapOf(s["networks"])
		if len(nets) == 0 && len(networks) > 0 {
			t.Errorf("service %s is on no network", name)
		}
		for nn, nv := range nets {
			ipn, ok := subnets[nn]
			if _, declared := networks[nn]; !declared {
				t.Errorf("service %s: network %q is not declared", name, nn)
				continue
			}
			ip, _ := mapOf(nv)["ipv4_address"].(string)
			if ip == "" {
				continue
			}
			if !ok || !ipn.Contains(net.ParseIP(ip)) {
				t.Errorf("service %s: ipv4_address %s is outside network %s", name, ip, nn)
			}
			if other, dup := addrs[ip]; dup {
				t.Errorf("services %s and %s share %s", name, other, ip)
			}
			addrs[ip] = name
		}
		for _, p := range listOf(s["ports"]) {
			spec, _ := p.(string)
			hostIP, hostPort, ctrPort, proto, err := parsePort(spec)
			if err != nil {
				t.Errorf("service %s: port %q: %v", name, spec, err)
				continue
			}
			if hostIP != "127.0.0.1" {
				t.Errorf("service %s: port %q is published beyond loopback (MI and jsonrpcs have no authentication)", name, spec)
			}
			_ = ctrPort
			key := hostPort + "/" + proto
			if other, dup := hostPorts[key]; dup {
				t.Errorf("host port %s published by both %s and %s", key, name, other)
			}
			hostPorts[key] = name
		}
		for dep, dv := range mapOf(s["depends_on"]) {
			d := mapOf(services[dep])
			if d == nil {
				t.Errorf("service %s depends on unknown service %q", name, dep)
				continue
			}
			if mapOf(dv)["condition"] == "service_healthy" && d["healthcheck"] == nil {
				t.Errorf("service %s waits for %s to be healthy, but %s has no healthcheck", name, dep, dep)
			}
		}
		if hc := mapOf(s["healthcheck"]); hc != nil {
			test := listOf(hc["test"])
			if len(test) < 2 || (test[0] != "CMD" && test[0] != "CMD-SHELL") {
				t.Errorf("service %s: healthcheck test %v: want [CMD, …] or [CMD-SHELL, …]", name, test)
			}
		}
	}

	// Every lab address a config writes is a service's address.
	files, _ := filepath.Glob(repoPath("contrib/lab/*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || strings.HasSuffix(f, ".md") {
			continue
		}
		for _, ip := range labAddrRe.FindAllString(string(b), -1) {
			if _, ok := addrs[ip]; !ok && !strings.HasSuffix(ip, ".0") {
				t.Errorf("%s uses %s, which no service in docker-compose.yml has", filepath.Base(f), ip)
			}
		}
	}
	// The proxies' configs listen on their own service address.
	for file, svc := range map[string]string{"contrib/lab/opensips.cfg": "opensips", "contrib/lab/sipside.toml": "sipside"} {
		ip := ipOf(services[svc])
		if ip != "" && !strings.Contains(readFile(t, file), ip) {
			t.Errorf("%s does not mention %s's address %s", file, svc, ip)
		}
	}
}

func ipOf(sv any) string {
	for _, nv := range mapOf(mapOf(sv)["networks"]) {
		if ip, ok := mapOf(nv)["ipv4_address"].(string); ok {
			return ip
		}
	}
	return ""
}

// parsePort reads the short port syntax "[HOST_IP:]HOST:CONTAINER[/PROTO]".
func parsePort(s string) (hostIP, host, ctr, proto string, err error) {
	proto = "tcp"
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		s, proto = s[:i], s[i+1:]
	}
	parts := strings.Split(s, ":")
	switch len(parts) {
	case 2:
		host, ctr = parts[0], parts[1]
	case 3:
		hostIP, host, ctr = parts[0], parts[1], parts[2]
	default:
		return "", "", "", "", errors.New("want [HOST_IP:]HOST:CONTAINER[/PROTO]")
	}
	for _, p := range []string{host, ctr} {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", "", "", "", fmt.Errorf("bad port %q", p)
		}
	}
	if proto != "tcp" && proto != "udp" {
		return "", "", "", "", fmt.Errorf("protocol %q", proto)
	}
	return hostIP, host, ctr, proto, nil
}

// TestComposeConfig runs the real validator when one is installed:
// `docker compose config -q` (plugin) or Debian's docker-compose 1.29, neither
// of which needs a Docker engine for this.
func TestComposeConfig(t *testing.T) {
	var cmd *exec.Cmd
	if p, err := exec.LookPath("docker-compose"); err == nil {
		cmd = exec.Command(p, "-f", "docker-compose.yml", "config", "-q")
	} else if p, err := exec.LookPath("docker"); err == nil && exec.Command(p, "compose", "version").Run() == nil {
		cmd = exec.Command(p, "compose", "-f", "docker-compose.yml", "config", "-q")
	} else {
		testenv.Missing(t, "docker-compose (validates docker-compose.yml without an engine)", "apt-get install docker-compose")
		return
	}
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
	}
}

// ---------------------------------------------------------------------------
// Dockerfile

type dockerInstr struct {
	line int
	op   string // upper case
	args string
}

func parseDockerfile(src string) []dockerInstr {
	var out []dockerInstr
	var cur strings.Builder
	start := 0
	for i, l := range strings.Split(src, "\n") {
		trim := strings.TrimSpace(l)
		if cur.Len() == 0 && (trim == "" || strings.HasPrefix(trim, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		} else if strings.HasPrefix(trim, "#") {
			continue
		}
		if strings.HasSuffix(trim, "\\") {
			cur.WriteString(strings.TrimSuffix(trim, "\\") + " ")
			continue
		}
		cur.WriteString(trim)
		op, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, dockerInstr{line: start, op: strings.ToUpper(op), args: strings.TrimSpace(args)})
		cur.Reset()
	}
	return out
}

func TestDockerfile(t *testing.T) {
	instrs := parseDockerfile(readFile(t, "contrib/docker/Dockerfile"))
	ignore := dockerignore(t)
	stages := map[string]bool{}
	var (
		finalUser, entrypoint, cmd string
		exposed                    = map[string]bool{}
		built                      bool
		nFrom                      int
	)
	buildRe := regexp.MustCompile(`go build .*?(\./cmd/[a-z]+)`)
	for _, in := range instrs {
		switch in.op {
		case "FROM":
			nFrom++
			f := strings.Fields(in.args)
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				stages[f[2]] = true
			}
			finalUser = ""
		case "COPY":
			f := strings.Fields(in.args)
			from := ""
			var srcs []string
			for _, a := range f {
				switch {
				case strings.HasPrefix(a, "--from="):
					from = strings.TrimPrefix(a, "--from=")
				case strings.HasPrefix(a, "--"):
				default:
					srcs = append(srcs, a)
				}
			}
			if len(srcs) < 2 {
				t.Errorf("Dockerfile:%d: COPY %s: want SRC… DST", in.line, in.args)
				continue
			}
			srcs = srcs[:len(srcs)-1]
			if from != "" {
				if !stages[from] {
					t.Errorf("Dockerfile:%d: COPY --from=%s: no earlier stage of that name", in.line, from)
				}
				continue
			}
			for _, s := range srcs {
				if s == "." {
					continue
				}
				if _, err := os.Stat(repoPath(s)); err != nil {
					t.Errorf("Dockerfile:%d: COPY %s: %v", in.line, s, err)
				}
				if p := ignore.excludes(s); p != "" {
					t.Errorf("Dockerfile:%d: COPY %s, but .dockerignore excludes it (%s)", in.line, s, p)
				}
			}
		case "RUN":
			if m := buildRe.FindStringSubmatch(in.args); m != nil {
				built = true
				if m[1] != "./cmd/sipside" {
					t.Errorf("Dockerfile:%d: builds %s, want ./cmd/sipside", in.line, m[1])
				}
				if !strings.Contains(in.args, "CGO_ENABLED=0") {
					t.Errorf("Dockerfile:%d: go build without CGO_ENABLED=0: the binary would need libc", in.line)
				}
			}
		case "USER":
			finalUser = in.args
		case "EXPOSE":
			for _, p := range strings.Fields(in.args) {
				if !strings.Contains(p, "/") {
					p += "/tcp"
				}
				exposed[p] = true
			}
		case "ENTRYPOINT":
			entrypoint = in.args
		case "CMD":
			cmd = in.args
		}
	}
	if nFrom < 2 {
		t.Error("Dockerfile: want a multi-stage build (builder, then a small image)")
	}
	if !built {
		t.Error("Dockerfile: no `go build … ./cmd/sipside`")
	}
	if u, _, _ := strings.Cut(finalUser, ":"); u == "" || u == "0" || u == "root" {
		t.Errorf("Dockerfile: final stage runs as %q, want a non-root user", finalUser)
	}
	if entrypoint != `["sipside"]` {
		t.Errorf(`Dockerfile: ENTRYPOINT %s, want ["sipside"]`, entrypoint)
	}
	if cmd != `["run", "-c", "/etc/sipside/sipside.toml"]` {
		t.Errorf(`Dockerfile: CMD %s, want ["run", "-c", "/etc/sipside/sipside.toml"]`, cmd)
	}

	// Everything the build compiles is in the build context.
	list := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{end}}", "./cmd/sipside")
	list.Dir = root
	out, err := list.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	abs, _ := filepath.Abs(root)
	for _, d := range strings.Fields(string(out)) {
		if rel, err := filepath.Rel(abs, d); err == nil && !strings.HasPrefix(rel, "..") {
			if p := ignore.excludes(filepath.ToSlash(rel)); p != "" {
				t.Errorf(".dockerignore pattern %q excludes %s, which the build needs", p, rel)
			}
		}
	}

	// Ports sipside listens on in the lab, and the ones compose publishes, are exposed.
	services := mapOf(loadCompose(t)["services"])
	for _, p := range listOf(mapOf(services["sipside"])["ports"]) {
		_, _, ctr, proto, err := parsePort(p.(string))
		if err == nil && !exposed[ctr+"/"+proto] {
			t.Errorf("docker-compose publishes sipside's %s/%s, which the Dockerfile does not EXPOSE", ctr, proto)
		}
	}
	lab := readFile(t, "contrib/lab/sipside.toml")
	for _, m := range regexp.MustCompile(`"(udp|tcp|netstring|sip|http)(?::|://)(?:172\.28\.0\.40|0\.0\.0\.0):(\d+)`).FindAllStringSubmatch(lab, -1) {
		proto := "tcp"
		if m[1] == "udp" || m[1] == "sip" {
			proto = "udp"
		}
		if !exposed[m[2]+"/"+proto] {
			t.Errorf("contrib/lab/sipside.toml listens on %s/%s, which the Dockerfile does not EXPOSE", m[2], proto)
		}
	}
	if !strings.Contains(lab, `listen = "0.0.0.0:`) {
		t.Error("contrib/lab/sipside.toml: [http] must listen on 0.0.0.0 in a container, or the published port reaches nothing")
	}

	// The builder stage's command works here, and gives a static binary.
	bin := sipsideBin(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("CGO_ENABLED=0 build has an ELF interpreter: not static")
		}
	}
	if out, err := exec.Command(bin, "check", "-c", repoPath("contrib/sipside.toml")).CombinedOutput(); err != nil {
		t.Errorf("the Dockerfile's `sipside check -c contrib/sipside.toml` fails: %v\n%s", err, out)
	}
}

type ignoreList []string

func dockerignore(t *testing.T) ignoreList {
	var l ignoreList
	for _, line := range strings.Split(readFile(t, ".dockerignore"), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		l = append(l, line)
	}
	return l
}

// excludes returns the pattern that excludes path (slash-separated, relative
// to the context), or "". It understands the patterns this repository uses:
// plain names and globs anchored at the root, and **/NAME/.
func (l ignoreList) excludes(path string) string {
	for _, p := range l {
		pat := strings.TrimSuffix(p, "/")
		if rest, ok := strings.CutPrefix(pat, "**/"); ok {
			for _, seg := range strings.Split(path, "/") {
				if ok, _ := filepath.Match(rest, seg); ok {
					return p
				}
			}
			continue
		}
		parts := strings.Split(path, "/")
		for i := 1; i <= len(parts); i++ {
			if ok, _ := filepath.Match(pat, strings.Join(parts[:i], "/")); ok {
				return p
			}
		}
	}
	return ""
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

// sipsideBin builds ./cmd/sipside once, as the Dockerfile does (CGO_ENABLED=0).
func sipsideBin(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "sipside-contrib-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "sipside")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", binPath, "./cmd/sipside")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("CGO_ENABLED=0 go build ./cmd/sipside: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// ---------------------------------------------------------------------------
// sipside.toml examples

// sectionsLater are the sections `sipside run` learns when the daemon wires
// the DMQ node and the AMQP bridge; until then `sipside check` calls them
// unknown keys, and this test validates them with their packages instead.
var sectionsLater = []string{"dmq", "amqp", "amqp.consume", "jsonrpc"}

func tomlFiles(t *testing.T) []string {
	a, _ := filepath.Glob(repoPath("contrib/*.toml"))
	b, _ := filepath.Glob(repoPath("contrib/*/*.toml"))
	files := append(a, b...)
	if len(files) == 0 {
		t.Fatal("no contrib TOML files")
	}
	return files
}

// stripSections removes [name] and [[name]] tables (with their keys) from src.
func stripSections(src string, names []string) string {
	header := regexp.MustCompile(`^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?`)
	var b strings.Builder
	skip := false
	for _, l := range strings.SplitAfter(src, "\n") {
		if m := header.FindStringSubmatch(l); m != nil {
			skip = slices.Contains(names, m[1])
		}
		if !skip {
			b.WriteString(l)
		}
	}
	return b.String()
}

func TestExampleConfigs(t *testing.T) {
	bin := sipsideBin(t)
	for _, f := range tomlFiles(t) {
		name, _ := filepath.Rel(root, f)
		t.Run(name, func(t *testing.T) {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			// Examples and the lab's config are for other hosts (a container's
			// address, /run/sipside): their files are checked, not this machine.
			out, err := exec.Command(bin, "check", "--file-only", "-c", f).CombinedOutput()
			if err != nil {
				later := false
				for _, s := range sectionsLater {
					later = later || bytes.Contains(out, []byte(": "+s+": unknown key"))
				}
				if !later {
					t.Fatalf("sipside check: %v\n%s", err, out)
				}
				// Check the rest now; the sections below are checked by their packages.
				tmp := filepath.Join(t.TempDir(), filepath.Base(f))
				if err := os.WriteFile(tmp, []byte(stripSections(string(src), sectionsLater)), 0o644); err != nil {
					t.Fatal(err)
				}
				if out, err := exec.Command(bin, "check", "--file-only", "-c", tmp).CombinedOutput(); err != nil {
					t.Fatalf("sipside check without [dmq]/[amqp]/[jsonrpc]: %v\n%s", err, out)
				}
				t.Logf("sipside run does not know %v yet; checked them with dmq.Config and kazoo.Config", sectionsLater)
			}
			checkLaterSections(t, string(src))
		})
	}
}

// checkLaterSections validates [dmq], [amqp] and [jsonrpc] with the packages'
// own Config types: unknown keys and bad values fail now, before the daemon
// reads them.
func checkLaterSections(t *testing.T, src string) {
	t.Helper()
	var c struct {
		DMQ     *dmq.Config          `toml:"dmq"`
		AMQP    *kazoo.AMQPConfig    `toml:"amqp"`
		JSONRPC *kazoo.JSONRPCConfig `toml:"jsonrpc"`
	}
	md, err := toml.Decode(src, &c)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range md.Undecoded() {
		if slices.Contains([]string{"dmq", "amqp", "jsonrpc"}, k[0]) {
			t.Errorf("unknown key %s", k)
		}
	}
	if c.DMQ != nil {
		if err := c.DMQ.Validate(); err != nil {
			t.Errorf("[dmq]: %v", err)
		}
	}
	if c.AMQP != nil || c.JSONRPC != nil {
		var k kazoo.Config
		if c.AMQP != nil {
			k.AMQP = *c.AMQP
		}
		if c.JSONRPC != nil {
			k.JSONRPC = *c.JSONRPC
		}
		k = k.WithDefaults()
		if err := k.Validate(); err != nil {
			t.Errorf("[amqp]/[jsonrpc]: %v", err)
		}
	}
}

// ---------------------------------------------------------------------------
// proxy configs

func cfgFiles(t *testing.T, pattern string, magic func(string) bool) []string {
	files, _ := filepath.Glob(repoPath(pattern))
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && magic(string(b)) {
			out = append(out, f)
		}
	}
	return out
}

func isKamailio(src string) bool { return strings.HasPrefix(src, "#!KAMAILIO") }

func TestKamailioConfigs(t *testing.T) {
	files := append(cfgFiles(t, "contrib/kamailio/*.cfg", isKamailio), cfgFiles(t, "contrib/lab/*.cfg", isKamailio)...)
	if len(files) < 4 {
		t.Fatalf("found %d Kamailio configs, want contrib/kamailio/*.cfg and contrib/lab/kamailio.cfg", len(files))
	}
	// KAMAILIO_BIN picks another build (testenv.FindKamailio); -L gives it the modules
	// directory, since the configs carry no mpath (a packaged Kamailio has one built in).
	kb := testenv.NeedKamailio(t)
	for _, f := range files {
		src, _ := os.ReadFile(f)
		variants := [][]string{nil}
		if bytes.Contains(src, []byte("#!ifdef NODE_B")) {
			variants = append(variants, []string{"-A", "NODE_B"})
		}
		for _, extra := range variants {
			name, _ := filepath.Rel(root, f)
			t.Run(strings.Join(append([]string{name}, extra...), " "), func(t *testing.T) {
				args := append(append([]string{"-c", "-L", kb.ModulesDir}, extra...), "-f", f)
				out, err := exec.Command(kb.Bin, args...).CombinedOutput()
				if err != nil || !bytes.Contains(out, []byte("config file ok")) {
					t.Fatalf("kamailio %s: %v\n%s", strings.Join(args, " "), err, tail(out, 20))
				}
			})
		}
	}
}

// TestLabKamailioRuns starts contrib/lab/kamailio.cfg as the compose file
// does (node A, and node B with -A NODE_B), with the lab's addresses moved to
// 127.0.0.131/.132, runs the compose healthcheck command against each node,
// and checks the pair for real: a REGISTER on A is relayed over evapi, a
// message as sipside's consumer delivers it over evapi makes the script write
// htable, and both htable writes reach B over DMQ.
func TestLabKamailioRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two Kamailio nodes")
	}
	kb := testenv.NeedKamailio(t)
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash for the compose healthcheck command")
	}
	services := mapOf(loadCompose(t)["services"])
	addr := map[string]string{"172.28.0.31": "127.0.0.131", "172.28.0.32": "127.0.0.132", "172.28.0.40": "127.0.0.140"}
	src := readFile(t, "contrib/lab/kamailio.cfg")
	for from, to := range addr {
		src = strings.ReplaceAll(src, from, to)
	}
	// Each container has its own loopback; here the nodes share one.
	src = strings.Replace(src, "listen=tcp:127.0.0.1:5071\n", "", 1)

	for _, node := range []struct{ svc, ip string }{{"kamailio-a", "127.0.0.131"}, {"kamailio-b", "127.0.0.132"}} {
		s := mapOf(services[node.svc])
		dir := t.TempDir()
		cfg := filepath.Join(dir, "kamailio.cfg")
		body := strings.Replace(src, "#!KAMAILIO\n", fmt.Sprintf("#!KAMAILIO\nrun_dir=%q\n", dir), 1)
		if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		args := []string{"-L", kb.ModulesDir}
		for _, a := range listOf(s["entrypoint"])[1:] {
			a := a.(string)
			if a == "/etc/kamailio/kamailio.cfg" {
				a = cfg
			}
			args = append(args, a)
		}
		startOwn(t, filepath.Join(dir, "kamailio.log"), kb.Bin, args...)
		hc := listOf(mapOf(s["healthcheck"])["test"])
		var cmd []string
		for _, a := range hc[1:] {
			cmd = append(cmd, strings.ReplaceAll(a.(string), "127.0.0.1/5071", node.ip+"/5071"))
		}
		if err := poll(t, 20*time.Second, func() error {
			out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%v %s", err, out)
			}
			return nil
		}); err != nil {
			log, _ := os.ReadFile(filepath.Join(dir, "kamailio.log"))
			t.Fatalf("%s: the compose healthcheck never passed: %v\n%s", node.svc, err, tail(log, 30))
		}
	}

	// evapi: the lab's sipside is a client of A.
	ev, err := net.DialTimeout("tcp", "127.0.0.131:8448", 2*time.Second)
	if err != nil {
		t.Fatalf("evapi on A: %v", err)
	}
	defer ev.Close()
	time.Sleep(200 * time.Millisecond) // the evapi worker registers the client

	user := fmt.Sprintf("contrib%d", time.Now().UnixNano()%100000)
	c, err := net.Dial("udp", "127.0.0.131:5060")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := c.LocalAddr().String()
	reg := fmt.Sprintf("REGISTER sip:127.0.0.131 SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s;rport\r\nMax-Forwards: 70\r\n"+
		"From: <sip:%s@lab>;tag=1\r\nTo: <sip:%s@lab>\r\nCall-ID: %s@lab\r\nCSeq: 1 REGISTER\r\nContact: <sip:%s@%s>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n",
		local, user, user, user, user, user, local)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(reg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "SIP/2.0 200") {
		t.Fatalf("REGISTER on A: %v %q", err, buf[:n])
	}

	ev.SetDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	for !bytes.Contains(got, []byte(user)) {
		n, err := ev.Read(buf)
		if err != nil {
			t.Fatalf("evapi: no E_KAMAILIO_REGISTER for %s: %v (got %q)", user, err, got)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Contains(got, []byte(`"event":"E_KAMAILIO_REGISTER"`)) {
		t.Errorf("evapi relayed %q", got)
	}

	// sipside's consumer delivers over evapi: the script writes the cell.
	msg := fmt.Sprintf(`{"event":"amqp","exchange":"kamailio_cmd","routing_key":"cmd.set","body":{"cmd":"set","key":"k-%s","value":"v-%s"}}`, user, user)
	if _, err := fmt.Fprintf(ev, "%d:%s,", len(msg), msg); err != nil {
		t.Fatalf("evapi write: %v", err)
	}
	if err := poll(t, 5*time.Second, func() error {
		return rpcHas("http://127.0.0.132:5071/RPC", "k-"+user, "v-"+user)
	}); err != nil {
		t.Errorf("evapi message -> htable on A -> DMQ -> B: %v", err)
	}

	// DMQ: A's $sht(repl=>last_register) reaches B.
	if err := poll(t, 10*time.Second, func() error {
		return rpcHas("http://127.0.0.132:5071/RPC", "last_register", user)
	}); err != nil {
		t.Errorf("htable over DMQ: %v", err)
	}
}

// rpcHas asks a Kamailio node for htable cell repl=>key over jsonrpcs and
// wants value in the answer.
func rpcHas(url, key, value string) error {
	body := fmt.Sprintf(`{"jsonrpc":"2.0","method":"htable.get","params":["repl",%q],"id":1}`, key)
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if !bytes.Contains(b, []byte(value)) {
		return fmt.Errorf("%s: %s", url, b)
	}
	return nil
}

// startOwn starts a process in its own process group and stops the group,
// by its id, when the test ends.
func startOwn(t *testing.T, logPath, bin string, args ...string) {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second): // Kamailio 5.6 sometimes wedges a child on SIGTERM
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		logf.Close()
	})
}

// poll calls f until it succeeds or d passes, and returns its last error.
func poll(t *testing.T, d time.Duration, f func() error) error {
	t.Helper()
	return testenv.Poll(d, 200*time.Millisecond, f)
}

// TestOpenSIPSConfigs runs `$OPENSIPS_BIN -c` on every OpenSIPS config. The
// configs carry no mpath (packaged OpenSIPS has one built in); for a source
// build it is added as testenv does ($OPENSIPS_MPATH or PREFIX/lib64/opensips/modules/),
// and the lab's container addresses become loopback.
func TestOpenSIPSConfigs(t *testing.T) {
	isOpenSIPS := func(s string) bool { return !isKamailio(s) && strings.Contains(s, "loadmodule") }
	files := append(cfgFiles(t, "contrib/opensips/*.cfg", isOpenSIPS), cfgFiles(t, "contrib/lab/*.cfg", isOpenSIPS)...)
	if len(files) < 3 {
		t.Fatalf("found %d OpenSIPS configs, want contrib/opensips/*.cfg and contrib/lab/opensips.cfg", len(files))
	}
	bin := os.Getenv("OPENSIPS_BIN")
	if bin == "" {
		t.Skipf("OPENSIPS_BIN is not set: the %d OpenSIPS configs are checked only against a real OpenSIPS 3.6 (OPENSIPS_BIN=/path/to/sbin/opensips)", len(files))
	}
	mpath := os.Getenv("OPENSIPS_MPATH")
	if mpath == "" {
		mpath = filepath.Join(filepath.Dir(filepath.Dir(bin)), "lib64", "opensips", "modules") + "/"
	}
	for _, f := range files {
		name, _ := filepath.Rel(root, f)
		t.Run(name, func(t *testing.T) {
			src, _ := os.ReadFile(f)
			cfg := fmt.Sprintf("mpath = %q\n", mpath) + labAddrRe.ReplaceAllString(string(src), "127.0.0.1")
			tmp := filepath.Join(t.TempDir(), filepath.Base(f))
			if err := os.WriteFile(tmp, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, "-c", "-f", tmp).CombinedOutput()
			if err != nil {
				t.Fatalf("%s -c -f %s: %v\n%s", bin, name, err, tail(out, 20))
			}
		})
	}
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ---------------------------------------------------------------------------
// metric names

var metricRe = regexp.MustCompile(`\b(?:sipside|go|process)_[a-z0-9_]*[a-z0-9]\b`)

// referencedMetrics returns every metric name in the alert rules, the scrape
// config and the dashboards, with the files that use it.
func referencedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	files, _ := filepath.Glob(repoPath("contrib/prometheus/*.yml"))
	more, _ := filepath.Glob(repoPath("contrib/grafana/*.json"))
	files = append(files, more...)
	if len(files) < 3 {
		t.Fatalf("want contrib/prometheus/{prometheus,alerts}.yml and a dashboard, found %v", files)
	}
	refs := map[string][]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".json") {
			var v any
			if err := json.Unmarshal(b, &v); err != nil {
				t.Errorf("%s: %v", f, err)
			}
		}
		for _, m := range metricRe.FindAllString(string(b), -1) {
			if !slices.Contains(refs[m], filepath.Base(f)) {
				refs[m] = append(refs[m], filepath.Base(f))
			}
		}
	}
	return refs
}

// sourceMetrics greps the Go sources for metric family names, the fallback
// for families `sipside run` does not register yet.
func sourceMetrics(t *testing.T) map[string]string {
	t.Helper()
	re := regexp.MustCompile(`"(sipside_[a-z0-9_]*[a-z0-9])"`)
	out := map[string]string{}
	for _, dir := range []string{"evi", "mi", "dmq", "kazoo", "internal", "cmd"} {
		filepath.WalkDir(repoPath(dir), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, m := range re.FindAllStringSubmatch(string(b), -1) {
				out[m[1]] = dir
			}
			return nil
		})
	}
	return out
}

// liveConfig gives `sipside run` something of every kind, so that every
// family registers: inputs, a subscription (to an MI port where nobody
// listens), a FAILOVER route with a rabbitmq member (no broker there), the
// spool, and, when withLater, a DMQ node and the AMQP bridge.
type live struct{ cfg, http, udp string }

func liveConfig(t *testing.T, dir string, withLater bool) live {
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
	udpIn := fmt.Sprintf("udp:127.0.0.1:%d", testenv.FreePort(t, "udp", "127.0.0.1"))
	tcpIn := fmt.Sprintf("tcp:127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
	mi := fmt.Sprintf("opensips:udp:127.0.0.1:%d", testenv.FreePort(t, "udp", "127.0.0.1"))
	deadAMQP := testenv.FreePort(t, "tcp", "127.0.0.1")
	deadUDP := testenv.FreePort(t, "udp", "127.0.0.1")
	cfg := fmt.Sprintf(`
[http]
listen = %q
[mi]
target = %q
[spool]
dir = %q
[[input]]
listen = %q
[[input]]
listen = %q
[[subscribe]]
target = %q
events = ["E_PIKE_BLOCKED"]
socket = %q
[[route]]
name = "live"
to = "virtual:FAILOVER rabbitmq:127.0.0.1:%d/exchange=x?k udp:127.0.0.1:%d"
`, httpAddr, mi, filepath.Join(dir, "spool"), udpIn, tcpIn, mi, udpIn, deadAMQP, deadUDP)
	if withLater {
		cfg += fmt.Sprintf(`
[dmq]
listen = "sip:127.0.0.1:%d"
seeds = ["sip:127.0.0.1:%d"]
[amqp]
brokers = ["amqp://guest:guest@127.0.0.1:%d/"]
[jsonrpc]
listen = ["tcp:127.0.0.1:%d"]
[[amqp.consume]]
exchange = "x"
routing_key = "k"
deliver = "events"
event = "E_X"
`, testenv.FreePort(t, "udp", "127.0.0.1"), testenv.FreePort(t, "udp", "127.0.0.1"), deadAMQP, testenv.FreePort(t, "tcp", "127.0.0.1"))
	}
	p := filepath.Join(dir, "live.toml")
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return live{cfg: p, http: httpAddr, udp: strings.TrimPrefix(udpIn, "udp:")}
}

// scrape starts `sipside run -c cfg`, reads /metrics once every family is
// there, and stops it. ok is false when the daemon refused the config.
func scrape(t *testing.T, bin string, l live) (families map[string]bool, refused string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.Command(bin, "run", "-c", l.cfg)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		select {
		case <-exited:
		default:
			cmd.Process.Signal(os.Interrupt) // our own child, by pid
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		}
	}()
	var (
		body string
		sent bool
	)
	for {
		select {
		case err := <-exited:
			exited <- err
			return nil, fmt.Sprintf("%v\n%s", err, out.String())
		case <-ctx.Done():
			t.Fatalf("no /metrics on %s within 30s\n%s", l.http, out.String())
		case <-time.After(100 * time.Millisecond):
		}
		resp, err := http.Get("http://" + l.http + "/metrics")
		if err != nil {
			continue
		}
		if !sent {
			// One event through the route, so that its backends start.
			if c, err := net.Dial("udp", l.udp); err == nil {
				c.Write([]byte(`{"jsonrpc":"2.0","method":"E_CONTRIB_TEST","params":{"a":1}}`))
				c.Close()
				sent = true
			}
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		// The subscription and the rabbitmq member register their families
		// when they first run; wait for both.
		if strings.Contains(body, "sipside_subscription_up{") && strings.Contains(body, "sipside_amqp_connects_total{") {
			break
		}
	}
	families = map[string]bool{}
	for _, l := range strings.Split(body, "\n") {
		f := strings.Fields(l)
		if len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			families[f[2]] = true
			if f[3] == "histogram" || f[3] == "summary" {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					families[f[2]+s] = true
				}
			}
		}
	}
	return families, ""
}

func TestMetricNames(t *testing.T) {
	refs := referencedMetrics(t)
	bin := sipsideBin(t)
	dir := t.TempDir()

	live, refused := scrape(t, bin, liveConfig(t, dir, true))
	laterLive := live != nil
	if !laterLive {
		if !strings.Contains(refused, "unknown key") {
			t.Fatalf("sipside run refused the live config:\n%s", refused)
		}
		t.Logf("sipside run does not take [dmq]/[amqp]/[jsonrpc] yet; scraping without them")
		live, refused = scrape(t, bin, liveConfig(t, dir, false))
		if live == nil {
			t.Fatalf("sipside run refused the live config:\n%s", refused)
		}
	}
	src := sourceMetrics(t)
	var notLive []string
	names := make([]string, 0, len(refs))
	for n := range refs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if live[n] {
			continue
		}
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
		if pkg, ok := src[base]; ok && !laterLive && (pkg == "dmq" || pkg == "kazoo" || pkg == "internal") {
			notLive = append(notLive, n)
			continue
		}
		t.Errorf("%s (used in %s) is not in sipside's /metrics", n, strings.Join(refs[n], ", "))
	}
	if len(notLive) > 0 {
		t.Logf("found only in the Go sources, not yet in a live /metrics (sipside run does not start the DMQ node and the AMQP bridge yet): %s", strings.Join(notLive, " "))
	}
}

// TestPrometheusFiles runs promtool on the scrape config and the rules, runs
// the alert unit tests (alerts_test.yml), and parses every dashboard query as
// a recording rule, so that a PromQL typo fails here and not on a pager.
func TestPrometheusFiles(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		testenv.Missing(t, "promtool", "apt-get install --no-install-recommends prometheus")
		return
	}
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(promtool, args...)
		cmd.Dir = repoPath("contrib/prometheus")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, tail(out, 40))
		}
	}
	run("check", "config", "prometheus.yml")
	run("check", "rules", "alerts.yml")
	run("test", "rules", "alerts_test.yml")

	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	files, _ := filepath.Glob(repoPath("contrib/grafana/*.json"))
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &dash); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		grafanaVars := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*")
		for _, p := range dash.Panels {
			for _, tg := range p.Targets {
				n++
				q, _ := json.Marshal(grafanaVars.Replace(tg.Expr)) // a JSON string is a YAML string
				fmt.Fprintf(&rules, "      - record: dashboard:query_%d\n        expr: %s\n", n, q)
			}
		}
	}
	if n == 0 {
		t.Fatal("no dashboard queries")
	}
	tmp := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(tmp, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run("check", "rules", tmp)
}

// ---------------------------------------------------------------------------
// a YAML reader for the subset docker-compose.yml uses: block mappings and
// sequences by indentation, plain/quoted scalars, flow sequences of scalars,
// and {} — no anchors, no multi-line scalars. Enough to catch drift; the real
// validator is TestComposeConfig.

type yline struct {
	n      int // line number
	indent int
	text   string
}

func parseYAML(src string) (any, error) {
	var lines []yline
	for i, l := range strings.Split(src, "\n") {
		if strings.ContainsRune(l, '\t') && strings.TrimLeft(l, " ") != strings.TrimLeft(l, " \t") {
			return nil, fmt.Errorf("line %d: tab in indentation", i+1)
		}
		text := stripComment(l)
		if strings.TrimSpace(text) == "" {
			continue
		}
		trimmed := strings.TrimLeft(text, " ")
		lines = append(lines, yline{n: i + 1, indent: len(text) - len(trimmed), text: strings.TrimRight(trimmed, " ")})
	}
	if len(lines) == 0 {
		return nil, errors.New("empty document")
	}
	p := &yparser{lines: lines}
	v, err := p.node(lines[0].indent)
	if err == nil && p.i < len(lines) {
		err = fmt.Errorf("line %d: unexpected indentation", lines[p.i].n)
	}
	return v, err
}

// stripComment drops a # comment that is not inside quotes.
func stripComment(l string) string {
	var q byte
	for i := 0; i < len(l); i++ {
		c := l[i]
		switch {
		case q != 0:
			if c == '\\' && q == '"' {
				i++
			} else if c == q {
				q = 0
			}
		case c == '"' || c == '\'':
			q = c
		case c == '#' && (i == 0 || l[i-1] == ' '):
			return l[:i]
		}
	}
	return l
}

type yparser struct {
	lines []yline
	i     int
}

func isSeqItem(s string) bool { return s == "-" || strings.HasPrefix(s, "- ") }

func (p *yparser) node(indent int) (any, error) {
	if isSeqItem(p.lines[p.i].text) {
		return p.seq(indent)
	}
	return p.mapping(indent)
}

func (p *yparser) mapping(indent int) (any, error) {
	m := map[string]any{}
	for p.i < len(p.lines) && p.lines[p.i].indent == indent && !isSeqItem(p.lines[p.i].text) {
		l := p.lines[p.i]
		key, rest, ok := splitKey(l.text)
		if !ok {
			return nil, fmt.Errorf("line %d: want KEY: VALUE, got %q", l.n, l.text)
		}
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("line %d: duplicate key %q", l.n, key)
		}
		p.i++
		if rest != "" {
			v, err := scalar(rest)
			if err != nil {
				return nil, fmt.Errorf("line %d: %v", l.n, err)
			}
			m[key] = v
			continue
		}
		if p.i < len(p.lines) && (p.lines[p.i].indent > indent || (p.lines[p.i].indent == indent && isSeqItem(p.lines[p.i].text))) {
			v, err := p.node(p.lines[p.i].indent)
			if err != nil {
				return nil, err
			}
			m[key] = v
			continue
		}
		m[key] = nil
	}
	return m, nil
}

func (p *yparser) seq(indent int) (any, error) {
	var s []any
	for p.i < len(p.lines) && p.lines[p.i].indent == indent && isSeqItem(p.lines[p.i].text) {
		l := p.lines[p.i]
		item := strings.TrimSpace(strings.TrimPrefix(l.text, "-"))
		if item == "" {
			p.i++
			if p.i >= len(p.lines) || p.lines[p.i].indent <= indent {
				s = append(s, nil)
				continue
			}
			v, err := p.node(p.lines[p.i].indent)
			if err != nil {
				return nil, err
			}
			s = append(s, v)
			continue
		}
		if _, _, isMap := splitKey(item); isMap && item[0] != '"' && item[0] != '\'' && item[0] != '[' {
			// "- key: value" starts a mapping whose keys line up with "key".
			inner := indent + (len(l.text) - len(item))
			p.lines[p.i] = yline{n: l.n, indent: inner, text: item}
			v, err := p.mapping(inner)
			if err != nil {
				return nil, err
			}
			s = append(s, v)
			continue
		}
		v, err := scalar(item)
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", l.n, err)
		}
		s = append(s, v)
		p.i++
	}
	return s, nil
}

// splitKey splits "key: value" or "key:"; quoted keys are not used here.
func splitKey(s string) (key, rest string, ok bool) {
	if s == "" || s[0] == '"' || s[0] == '\'' || s[0] == '[' || s[0] == '{' {
		return "", "", false
	}
	if k, r, found := strings.Cut(s, ": "); found {
		return strings.TrimSpace(k), strings.TrimSpace(r), true
	}
	if strings.HasSuffix(s, ":") && !strings.Contains(s, " ") {
		return strings.TrimSuffix(s, ":"), "", true
	}
	return "", "", false
}

func scalar(s string) (any, error) {
	switch {
	case s == "{}":
		return map[string]any{}, nil
	case strings.HasPrefix(s, "{"):
		return nil, fmt.Errorf("flow mapping %q: write it as a block mapping", s)
	case strings.HasPrefix(s, "["):
		var v []any
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			return nil, fmt.Errorf("flow sequence %s: %v (write double-quoted strings)", s, err)
		}
		return v, nil
	case strings.HasPrefix(s, `"`):
		var v string
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			return nil, fmt.Errorf("quoted string %s: %v", s, err)
		}
		return v, nil
	case strings.HasPrefix(s, "'"):
		if len(s) < 2 || !strings.HasSuffix(s, "'") {
			return nil, fmt.Errorf("unterminated %s", s)
		}
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'"), nil
	case strings.HasPrefix(s, "&") || strings.HasPrefix(s, "*") || s == "|" || s == ">":
		return nil, fmt.Errorf("%q: anchors and block scalars are outside the subset this test reads", s)
	}
	return s, nil
}

func mapOf(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func listOf(v any) []any {
	l, _ := v.([]any)
	return l
}

func TestParseYAML(t *testing.T) {
	v, err := parseYAML(`
a:
  b: "x # not a comment"  # a comment
  c: [ "p", "q" ]
  d:
    - one
    - k: v
      k2: 'it''s'
  e: {}
f:
- g
`)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(v)
	want := `{"a":{"b":"x # not a comment","c":["p","q"],"d":["one",{"k":"v","k2":"it's"}],"e":{}},"f":["g"]}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	for _, bad := range []string{"a: &x 1\n", "a:\n  b: 1\n c: 2\n", "a: {b: 1}\n", "a: 1\na: 2\n"} {
		if _, err := parseYAML(bad); err == nil {
			t.Errorf("parseYAML(%q): no error", bad)
		}
	}
}
