package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNotInstalled is wrapped by Start* errors when a binary or module a part needs is absent,
// so that New*/Shared* helpers can call Missing instead of failing with a confusing error.
var ErrNotInstalled = errors.New("not installed")

// proc is one started process, run as the leader of its own process group so that stopping it
// also stops everything it forked (Kamailio children, Erlang port programs).
type proc struct {
	name string
	cmd  *exec.Cmd
	pgid int
	done chan struct{}
	err  error // exit status; valid once done is closed

	watchdog *exec.Cmd // kills the group if the test binary dies; nil if it could not start
	lifeline *os.File  // its stdin's write end: closed by the kernel when this binary dies
}

// startProc starts cmd in a new process group with stdout and stderr appended to logPath.
func startProc(name string, cmd *exec.Cmd, logPath string) (*proc, error) {
	return startProcDir(name, cmd, logPath, "")
}

// startProcDir is startProc that also has dir removed if the test binary dies without cleanup.
func startProcDir(name string, cmd *exec.Cmd, logPath, dir string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", name, err)
	}
	defer logf.Close() // the child has its own copy
	cmd.Stdout = logf
	cmd.Stderr = logf
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	// If the test binary dies without running Main's cleanup (go test -timeout panics), the
	// leader dies with it instead of holding ports for the next run.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, cmd.Path, err)
	}
	p := &proc{name: name, cmd: cmd, pgid: cmd.Process.Pid, done: make(chan struct{})}
	p.startWatchdog(dir)
	register(p)
	go func() {
		p.err = cmd.Wait()
		// Nothing of the group may outlive its leader: a stray child would keep the ports.
		// Wait until the group is gone, so a restart on the same ports finds them free.
		_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
		waitGroupGone(p.pgid, 10*time.Second)
		p.stopWatchdog()
		unregister(p)
		close(p.done)
	}()
	return p, nil
}

// startWatchdog covers what Pdeathsig cannot: when the test binary dies without cleanup
// (SIGKILL, a -timeout panic), Pdeathsig kills only the leader, and Kamailio's children would
// keep running with the ports. The watchdog, in a group of its own, blocks reading a pipe only
// this binary holds open; at EOF it kills the group this binary started, and nothing else, and
// removes dir (when not empty), the part's temp dir that Main did not get to remove.
func (p *proc) startWatchdog(dir string) {
	r, w, err := os.Pipe()
	if err != nil {
		slog.Warn("testenv: no watchdog, the group may outlive a crashed test binary", "name", p.name, "err", err)
		return
	}
	defer r.Close()
	wd := exec.Command("/bin/sh", "-c", `read x; kill -s KILL -- "-$0" 2>/dev/null; [ -z "$1" ] || rm -rf -- "$1"`,
		strconv.Itoa(p.pgid), dir)
	wd.Stdin = r
	wd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := wd.Start(); err != nil {
		w.Close()
		slog.Warn("testenv: no watchdog, the group may outlive a crashed test binary", "name", p.name, "err", err)
		return
	}
	p.watchdog, p.lifeline = wd, w
}

// stopWatchdog ends the watchdog without letting it signal: once the group is gone its pgid
// could name someone else's group.
func (p *proc) stopWatchdog() {
	if p.watchdog == nil {
		return
	}
	_ = p.watchdog.Process.Kill()
	_ = p.watchdog.Wait()
	p.lifeline.Close()
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the leader to exit with SIGTERM and kills the group if it has not exited in grace.
// A part that hangs on shutdown is stopped all the same, with a warning rather than an error:
// Kamailio 5.6 now and then wedges a child that gets SIGTERM right after startup (observed about
// once in 40 restarts), and a test must not fail for that.
func (p *proc) stop(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("SIGTERM %s pid %d: %w", p.name, p.pid(), err)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		slog.Warn("testenv: no exit within the grace time after SIGTERM; killing its process group", "name", p.name, "pid", p.pid(), "grace", grace)
		p.kill()
		return nil
	}
}

// kill sends SIGKILL to the whole process group and waits for the leader to be reaped.
func (p *proc) kill() {
	if p.exited() {
		return
	}
	_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
	<-p.done
}

// waitGroupGone polls /proc until no live (non-zombie) process is in group pgid: SIGKILL is
// asynchronous, and a dying child still holds its sockets.
func waitGroupGone(pgid int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for groupAlive(pgid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

func groupAlive(pgid int) bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		// No procfs: fall back to the kernel's answer, which counts zombies as members.
		return syscall.Kill(-pgid, 0) == nil
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		// Fields after the parenthesised command: state ppid pgrp …
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if g, err := strconv.Atoi(f[2]); err == nil && g == pgid {
			return true
		}
	}
	return false
}

// logTail returns the last n lines of a log file, for error messages that explain a failed start.
func logTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log %s: %v)", path, err)
	}
	defer f.Close()
	const max = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > max {
		_, _ = f.Seek(st.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "--- last %d lines of %s ---\n", len(lines), path)
	for _, l := range lines {
		sb.Write(l)
		sb.WriteByte('\n')
	}
	return sb.String()
}
