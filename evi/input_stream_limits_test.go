package evi

import (
	"context"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/internal/metrics"
)

// Connections beyond max_conns are closed at once and counted; a freed slot
// is taken by the next connection, which delivers as usual.
func TestStreamInputMaxConns(t *testing.T) {
	f := newStreamFixture(t, "test:stream-maxconns", InputConfig{MaxConns: 2, ReplyTimeout: config.Duration(time.Second)})
	a, b := f.dial(t), f.dial(t)
	// Each held connection has its slot once it answered an event.
	for i, c := range []interface {
		Write([]byte) (int, error)
	}{a, b} {
		c.Write([]byte(`{"id":` + string(rune('1'+i)) + `,"jsonrpc":"2.0","method":"E_X"}`))
	}
	readReplies(t, a, 1)
	readReplies(t, b, 1)
	over := f.dial(t)
	over.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := over.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("third connection: read %v, want EOF (closed by max_conns)", err)
	}
	closed := f.m.ConnsClosed.With(f.in.name, "max_conns")
	checkFor(t, 5*time.Second, "max_conns refusal counted", func() bool { return closed.Value() == 1 })
	a.Close()
	checkFor(t, 5*time.Second, "a slot freed", func() bool { return len(f.in.slots) == 1 })
	c := f.dial(t)
	c.Write([]byte(`{"id":9,"jsonrpc":"2.0","method":"E_X"}`))
	if got := readReplies(t, c, 1); got[0] != `{"jsonrpc":"2.0","result":"OK","id":9}` {
		t.Errorf("reply on the freed slot = %s", got[0])
	}
}

// A connection that sends nothing for idle_timeout is closed and counted, and
// its slot comes back.
func TestStreamInputIdleTimeout(t *testing.T) {
	f := newStreamFixture(t, "test:stream-idle", InputConfig{MaxConns: 1, IdleTimeout: config.Duration(200 * time.Millisecond)})
	c := f.dial(t)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle connection: read %v, want EOF", err)
	}
	idle := f.m.ConnsClosed.With(f.in.name, "idle_timeout")
	checkFor(t, 5*time.Second, "idle close counted", func() bool { return idle.Value() == 1 })
	checkFor(t, 5*time.Second, "slot freed", func() bool { return len(f.in.slots) == 0 })
}

// emfileListener fails its accepts with EMFILE while fail is set.
type emfileListener struct {
	net.Listener
	fail atomic.Bool
}

func (l *emfileListener) Accept() (net.Conn, error) {
	if l.fail.Load() {
		time.Sleep(time.Millisecond)
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// While accepts fail the input says it is not ready (for /readyz), and says
// so no more once one succeeds.
func TestStreamInputNotReadyWhileAcceptFails(t *testing.T) {
	m := NewMetrics(metrics.New())
	in, err := OpenInput(Listen{Proto: "tcp", Addr: "127.0.0.1:0"}, InputConfig{}, Deps{}, m)
	if err != nil {
		t.Fatal(err)
	}
	si := in.(*streamInput)
	el := &emfileListener{Listener: si.ln}
	el.fail.Store(true)
	si.ln = el
	r, err := NewRouter([]RouteConfig{{Name: "r", To: "test:ready"}}, Deps{}, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	defer r.Close(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { in.Run(ctx, r); close(done) }()
	defer func() { cancel(); <-done; in.Close() }()
	checkFor(t, 5*time.Second, "not ready", func() bool { return strings.Contains(si.NotReady(), "too many open files") })
	el.fail.Store(false)
	c, err := net.Dial("tcp", si.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkFor(t, 5*time.Second, "ready again", func() bool { return si.NotReady() == "" })
}
