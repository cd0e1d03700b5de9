package testenv_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

func TestKamailioSideBySide(t *testing.T) {
	nodes := make([]*testenv.Kamailio, 2)
	var wg sync.WaitGroup
	for i, addr := range []string{"127.0.0.1", "127.0.0.2"} {
		wg.Go(func() {
			nodes[i] = testenv.NewKamailio(t, testenv.KamailioConfig{Name: string(rune('A' + i)), Addr: addr})
		})
	}
	wg.Wait()
	if t.Failed() || t.Skipped() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, k := range nodes {
		for _, tr := range []string{"http", "udp", "fifo"} {
			res, err := k.RPCOver(ctx, tr, "core.version")
			if err != nil {
				t.Fatalf("node %s over %s: %v", k.Name, tr, err)
			}
			var v string
			if err := json.Unmarshal(res, &v); err != nil || !strings.HasPrefix(v, "kamailio ") {
				t.Errorf("node %s over %s: core.version = %s (%v), want \"kamailio …\"", k.Name, tr, res, err)
			}
		}
		// The htable of the default template, and error answers as *RPCError.
		if _, err := k.RPC(ctx, "htable.sets", "t", "k", "v-"+k.Name); err != nil {
			t.Fatalf("node %s: htable.sets: %v", k.Name, err)
		}
		res, err := k.RPCOver(ctx, "fifo", "htable.get", "t", "k")
		if err != nil || !strings.Contains(string(res), "v-"+k.Name) {
			t.Errorf("node %s: htable.get = %s, %v; want value v-%s", k.Name, res, err, k.Name)
		}
		_, err = k.RPCOver(ctx, "udp", "no.such_method")
		var rerr *testenv.RPCError
		if !errors.As(err, &rerr) || rerr.Code != 500 {
			t.Errorf("node %s: unknown method: err = %v, want *RPCError code 500", k.Name, err)
		}
	}
	if nodes[0].SIPPort == nodes[1].SIPPort && nodes[0].Addr == nodes[1].Addr {
		t.Errorf("two nodes share %s:%d", nodes[0].Addr, nodes[0].SIPPort)
	}
}

func TestKamailioKillRestart(t *testing.T) {
	k := testenv.NewKamailio(t, testenv.KamailioConfig{Name: "R", Addr: "127.0.0.3"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	oldPid, oldPort := k.Pid, k.HTTPPort
	if err := k.Kill(); err != nil {
		t.Fatal(err)
	}
	if k.Running() {
		t.Fatal("still running after Kill")
	}
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	if _, err := k.RPC(short, "core.version"); err == nil {
		t.Fatal("core.version answered after Kill")
	}
	cancelShort()
	if err := k.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if k.Pid == oldPid || k.HTTPPort != oldPort {
		t.Errorf("after Restart: pid %d (was %d), http port %d (was %d); want a new pid on the same port", k.Pid, oldPid, k.HTTPPort, oldPort)
	}
	for _, tr := range []string{"http", "udp", "fifo"} {
		if _, err := k.RPCOver(ctx, tr, "core.version"); err != nil {
			t.Errorf("after Restart over %s: %v", tr, err)
		}
	}
	// A graceful restart too.
	if err := k.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := k.RPC(ctx, "core.uptime"); err != nil {
		t.Error(err)
	}
}

func TestKamailioBadTemplate(t *testing.T) {
	if _, err := testenv.StartKamailio(context.Background(), testenv.KamailioConfig{Template: "{{.Vars.nope}}"}); err == nil ||
		!strings.Contains(err.Error(), "nope") {
		t.Errorf("missing template var: err = %v, want it named", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := testenv.StartKamailio(ctx, testenv.KamailioConfig{Name: "nomod",
		Template: testenv.DefaultKamailioTemplate + "loadmodule \"no_such_module.so\"\n"})
	if !errors.Is(err, testenv.ErrNotInstalled) || !strings.Contains(err.Error(), "no_such_module") {
		t.Errorf("missing module: err = %v, want ErrNotInstalled naming the module", err)
	}
	_, err = testenv.StartKamailio(ctx, testenv.KamailioConfig{Name: "bad", Template: "#!KAMAILIO\nthis is not a config\n"})
	if errors.Is(err, testenv.ErrNotInstalled) {
		testenv.Missing(t, "kamailio", "apt-get install -y kamailio")
	}
	if err == nil || !strings.Contains(err.Error(), "last") {
		t.Errorf("broken config: err = %v, want an error with the log tail", err)
	}
}
