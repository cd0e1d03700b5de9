package testenv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const rabbitInstall = "apt-get install -y rabbitmq-server"

// rabbitStartTimeout is generous: a node takes 6-20 s to boot on 2 cores, and up to a minute
// when the machine is saturated by parallel builds and tests (observed at load average 13).
const rabbitStartTimeout = 120 * time.Second

// RabbitOptions tunes a private RabbitMQ node. The zero value is a lean node.
type RabbitOptions struct {
	Name       string // part of the node name and temp dir; default "rabbit"
	Schedulers int    // Erlang schedulers (+S N:N); default 1, which keeps CPU use low in CI
	Config     string // extra rabbitmq.conf lines (new-style sysctl format)
}

// RabbitMQ is a private RabbitMQ node: own node name, own ports, own epmd, own data dir.
type RabbitMQ struct {
	Host     string // 127.0.0.1
	Port     int    // AMQP
	URL      string // amqp://guest:guest@127.0.0.1:PORT/
	Dir      string // everything of the node (config, mnesia, logs, Erlang cookie); removed by Close
	Log      string // the node's console log
	NodeName string // sipside-<pid>-<n>@localhost
	DistPort int    // Erlang distribution
	EPMDPort int    // the node's private epmd, so that nodes of parallel test binaries never meet

	env       []string
	cred      *syscall.Credential
	serverBin string
	ctlBin    string

	mu   sync.Mutex
	node *proc
	epmd *proc
}

// NewRabbitMQ starts a private node for one test and closes it when the test ends; it calls
// Missing when RabbitMQ is not installed. Use it for chaos tests that stop or kill the broker.
func NewRabbitMQ(t testing.TB, opts RabbitOptions) *RabbitMQ {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rabbitStartTimeout)
	defer cancel()
	r, err := StartRabbitMQ(ctx, opts)
	if errors.Is(err, ErrNotInstalled) {
		Missing(t, "rabbitmq-server ("+err.Error()+")", rabbitInstall)
	}
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	return r
}

var shared struct {
	once sync.Once
	r    *RabbitMQ
	err  error
}

// SharedRabbitMQ returns the node shared by all tests of this binary, starting it on first use;
// Main closes it. Tests must not stop it, since tests run in parallel use it: break a node of
// your own (NewRabbitMQ, StartRabbitMQ) instead.
func SharedRabbitMQ(t testing.TB) *RabbitMQ {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), rabbitStartTimeout)
		defer cancel()
		shared.r, shared.err = StartRabbitMQ(ctx, RabbitOptions{Name: "shared"})
		if shared.err == nil {
			registerCloser(shared.r.Close)
		}
	})
	if errors.Is(shared.err, ErrNotInstalled) {
		Missing(t, "rabbitmq-server ("+shared.err.Error()+")", rabbitInstall)
	}
	if shared.err != nil {
		t.Fatalf("testenv: shared RabbitMQ: %v", shared.err)
	}
	if !shared.r.Running() {
		t.Fatalf("testenv: the shared RabbitMQ %s is not running: a test stopped or killed it (use NewRabbitMQ for that); log:\n%s",
			shared.r.NodeName, shared.r.LogTail(20))
	}
	return shared.r
}

// rabbitBinaries finds the real scripts, not Debian's /usr/sbin wrapper: the wrapper always
// drops to user rabbitmq with its own HOME and cookie, and hides the node behind su.
func rabbitBinaries() (server, ctl, epmd string, err error) {
	find := func(name string, candidates ...string) (string, error) {
		for _, c := range candidates {
			if _, err := os.Stat(c); err == nil {
				return c, nil
			}
		}
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		return "", fmt.Errorf("%s not found (looked in %s and PATH): %w", name, strings.Join(candidates, ", "), ErrNotInstalled)
	}
	if server, err = find("rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server"); err != nil {
		return
	}
	if ctl, err = find("rabbitmqctl", "/usr/lib/rabbitmq/bin/rabbitmqctl"); err != nil {
		return
	}
	epmd, err = find("epmd", "/usr/bin/epmd", "/usr/lib/erlang/bin/epmd")
	return
}

// StartRabbitMQ starts a private node and returns once an AMQP handshake succeeds. Without a
// deadline in ctx it waits 120 s.
func StartRabbitMQ(ctx context.Context, opts RabbitOptions) (*RabbitMQ, error) {
	server, ctl, epmdBin, err := rabbitBinaries()
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: %w", err)
	}
	if opts.Name == "" {
		opts.Name = "rabbit"
	}
	if opts.Schedulers <= 0 {
		opts.Schedulers = 1
	}
	ctx, cancel := withDefaultTimeout(ctx, rabbitStartTimeout)
	defer cancel()
	// A port picked free can be taken by someone else before the node binds it: start afresh.
	for attempt := 1; ; attempt++ {
		r, err := startRabbit(ctx, opts, server, ctl, epmdBin)
		if err == nil || attempt >= 3 || !strings.Contains(err.Error(), "eaddrinuse") || ctx.Err() != nil {
			return r, err
		}
		slog.Info("testenv: rabbitmq port taken meanwhile, retrying with new ports", "attempt", attempt)
	}
}

func startRabbit(ctx context.Context, opts RabbitOptions, server, ctl, epmdBin string) (*RabbitMQ, error) {
	var err error
	r := &RabbitMQ{Host: "127.0.0.1", serverBin: server, ctlBin: ctl}
	// As root, drop to user rabbitmq as the packaged service does: a broker has no business
	// running as root, and Erlang wants the cookie in HOME owned by the user who reads it.
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		if u, err := user.Lookup("rabbitmq"); err == nil {
			uid, _ = strconv.Atoi(u.Uid)
			gid, _ = strconv.Atoi(u.Gid)
			r.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}
		}
	}
	r.Dir, err = os.MkdirTemp("", "sipside-rmq-"+opts.Name+"-")
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: temp dir: %w", err)
	}
	registerDir(r.Dir)
	fail := func(err error) (*RabbitMQ, error) {
		r.shutdown()
		return nil, err
	}

	ports, err := freePorts("tcp", r.Host, 3)
	if err != nil {
		return fail(fmt.Errorf("rabbitmq: %w", err))
	}
	r.Port, r.DistPort, r.EPMDPort = ports[0], ports[1], ports[2]
	r.URL = fmt.Sprintf("amqp://guest:guest@%s/", net.JoinHostPort(r.Host, strconv.Itoa(r.Port)))
	r.NodeName = fmt.Sprintf("sipside-%d-%d@localhost", os.Getpid(), nextSeq())
	r.Log = filepath.Join(r.Dir, "node.log")

	conf := strings.Join([]string{
		"loopback_users.guest = true",
		// CI disks are often nearly full; a disk alarm would block every publisher.
		"disk_free_limit.absolute = 1",
		"vm_memory_high_watermark.relative = 0.9",
		"log.console = true",
		"log.console.level = info",
		"log.file = false",
		opts.Config,
		"",
	}, "\n")
	files := map[string]string{
		"rabbitmq.conf":     conf,
		"enabled_plugins":   "[].\n", // no management plugin: it doubles the boot time
		"rabbitmq-env.conf": "",      // keep /etc/rabbitmq/rabbitmq-env.conf out
	}
	for _, d := range []string{"mnesia", "log"} {
		if err := os.Mkdir(filepath.Join(r.Dir, d), 0o755); err != nil {
			return fail(fmt.Errorf("rabbitmq: %w", err))
		}
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(r.Dir, name), []byte(content), 0o644); err != nil {
			return fail(fmt.Errorf("rabbitmq: %w", err))
		}
	}
	if r.cred != nil {
		err := filepath.WalkDir(r.Dir, func(path string, _ os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(path, uid, gid)
		})
		if err != nil {
			return fail(fmt.Errorf("rabbitmq: give %s to user rabbitmq: %w", r.Dir, err))
		}
	}

	// Inherited RABBITMQ_* or ERL_* settings of the developer's shell must not leak in.
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "RABBITMQ_") || strings.HasPrefix(kv, "ERL_") ||
			strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "LANG=") || strings.HasPrefix(kv, "LC_ALL=") {
			continue
		}
		r.env = append(r.env, kv)
	}
	r.env = append(r.env,
		"HOME="+r.Dir, // the Erlang cookie goes here, private to this node and its rabbitmqctl
		"LANG=C.UTF-8", "LC_ALL=C.UTF-8",
		"ERL_EPMD_PORT="+strconv.Itoa(r.EPMDPort),
		"RABBITMQ_NODENAME="+r.NodeName,
		"RABBITMQ_NODE_IP_ADDRESS="+r.Host,
		"RABBITMQ_NODE_PORT="+strconv.Itoa(r.Port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(r.DistPort),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(r.Dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(r.Dir, "advanced.config"),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(r.Dir, "rabbitmq-env.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(r.Dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(r.Dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(r.Dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(r.Dir, "node.pid"),
		// Exec erl directly instead of a sh that forwards signals: SIGTERM and the parent-death
		// signal then reach the VM itself. -noinput because input is what this mode enables.
		"RABBITMQ_ALLOW_INPUT=1",
		fmt.Sprintf("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-noinput +S %d:%d +SDcpu 1:1 +SDio 2 +A 4 -kernel inet_dist_use_interface {127,0,0,1}",
			opts.Schedulers, opts.Schedulers),
	)

	epmd := exec.Command(epmdBin, "-port", strconv.Itoa(r.EPMDPort), "-address", "127.0.0.1")
	epmd.Dir, epmd.Env = r.Dir, r.env
	epmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.cred}
	r.epmd, err = startProcDir("epmd of "+r.NodeName, epmd, filepath.Join(r.Dir, "epmd.log"), r.Dir)
	if err != nil {
		return fail(fmt.Errorf("rabbitmq: %w", err))
	}
	if err := waitTCP(ctx, r.epmd, net.JoinHostPort("127.0.0.1", strconv.Itoa(r.EPMDPort))); err != nil {
		return fail(fmt.Errorf("rabbitmq: epmd: %w\n%s", err, logTail(filepath.Join(r.Dir, "epmd.log"), 10)))
	}

	if err := r.Start(ctx); err != nil {
		return fail(err)
	}
	slog.Debug("testenv: rabbitmq started", "node", r.NodeName, "url", r.URL, "dir", r.Dir)
	return r, nil
}

// Start starts the node (again) on the same ports and data dir and waits for AMQP.
func (r *RabbitMQ) Start(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx, rabbitStartTimeout)
	defer cancel()
	r.mu.Lock()
	if r.node != nil && !r.node.exited() {
		r.mu.Unlock()
		return fmt.Errorf("rabbitmq %s: already running", r.NodeName)
	}
	cmd := exec.Command(r.serverBin)
	cmd.Dir, cmd.Env = r.Dir, r.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.cred}
	p, err := startProc("rabbitmq "+r.NodeName, cmd, r.Log)
	if err != nil {
		r.mu.Unlock()
		return fmt.Errorf("rabbitmq: %w", err)
	}
	r.node = p
	r.mu.Unlock()

	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		conn, err := amqp.DialConfig(r.URL, amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
		if err == nil {
			conn.Close()
			return nil
		}
		lastErr = err
		select {
		case <-p.done:
			return fmt.Errorf("rabbitmq %s exited during startup (%v); see %s:\n%s", r.NodeName, p.err, r.Log, logTail(r.Log, 30))
		case <-ctx.Done():
			// A half-booted node would confuse the next Start: leave it stopped.
			p.kill()
			return fmt.Errorf("rabbitmq %s: no AMQP handshake on %s before the deadline (last error: %v); see %s:\n%s",
				r.NodeName, r.URL, lastErr, r.Log, logTail(r.Log, 30))
		case <-tick.C:
		}
	}
}

// Stop stops the node gracefully (SIGTERM, SIGKILL when ctx ends or after 30 s) and keeps
// its data dir and ports for Start.
func (r *RabbitMQ) Stop(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.node == nil {
		return nil
	}
	grace := 30 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		grace = time.Until(dl)
	}
	if err := r.node.stop(grace); err != nil {
		return fmt.Errorf("rabbitmq: %w", err)
	}
	return nil
}

// Kill sends SIGKILL to the node's process group, as a crash would.
func (r *RabbitMQ) Kill() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.node != nil {
		r.node.kill()
	}
	return nil
}

// LogTail returns the last n lines of the node's console log.
func (r *RabbitMQ) LogTail(n int) string { return logTail(r.Log, n) }

// AMQPChannel dials url (a node's URL, or one through a CutProxy) and opens a
// channel; the connection closes when t ends. For tests that declare, read
// and inspect queues beside the code under test.
func AMQPChannel(t testing.TB, url string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("testenv: dial %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("testenv: channel on %s: %v", url, err)
	}
	return ch
}

// Running reports whether the node's VM has not exited.
func (r *RabbitMQ) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.node != nil && !r.node.exited()
}

// Close stops the node and its epmd for good and removes its directory.
func (r *RabbitMQ) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := r.Stop(ctx)
	r.shutdown()
	return err
}

func (r *RabbitMQ) shutdown() {
	r.mu.Lock()
	if r.node != nil {
		r.node.kill()
	}
	if r.epmd != nil {
		r.epmd.kill()
	}
	r.mu.Unlock()
	if err := os.RemoveAll(r.Dir); err != nil {
		slog.Warn("testenv: removing rabbitmq dir", "dir", r.Dir, "err", err)
		return
	}
	unregisterDir(r.Dir)
}

// Ctl runs rabbitmqctl against this node, e.g. Ctl(ctx, "list_queues", "name", "messages"),
// and returns its combined output.
func (r *RabbitMQ) Ctl(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := withDefaultTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.ctlBin, append([]string{"-n", r.NodeName}, args...)...)
	cmd.Dir, cmd.Env = r.Dir, r.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("rabbitmqctl -n %s %s: %w: %s", r.NodeName, strings.Join(args, " "), err, out)
	}
	return out, nil
}

// waitTCP polls until addr accepts a TCP connection or p exits.
func waitTCP(ctx context.Context, p *proc, addr string) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v) before listening on %s", p.name, p.err, addr)
		case <-ctx.Done():
			return fmt.Errorf("%s not listening on %s before the deadline: %w", p.name, addr, err)
		case <-tick.C:
		}
	}
}
