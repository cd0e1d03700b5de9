package dmq

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// twoNodes is a bus of two sipside nodes; n1 has echo as given.
func twoNodes(t *testing.T, echo bool) (n1, n2 *goNode) {
	t.Helper()
	c1 := testConfig(t)
	c2 := testConfig(t, c1.Listen)
	c1.Seeds = []string{c2.Listen}
	c1.Echo = echo
	n1, n2 = startNode(t, c1), startNode(t, c2)
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if s := n1.status(c2.Listen); s != "active" {
			return errorf("n1 sees n2 %s", s)
		}
		return nil
	})
	return n1, n2
}

// TestWriteEcho: what a node writes raises no event there, nor does the same
// value coming back; a different value does. With echo on, both do.
func TestWriteEcho(t *testing.T) {
	for _, echo := range []bool{false, true} {
		t.Run(map[bool]string{false: "echo off", true: "echo on"}[echo], func(t *testing.T) {
			n1, n2 := twoNodes(t, echo)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := n1.WriteHTable(ctx, HTableWrite{Table: "t", Name: "k", Type: TypeStr, Str: "v"}, 0); err != nil {
				t.Fatal(err)
			}
			if c, ok := n2.HTable().Get("t", "k"); !ok || c.Str != "v" {
				t.Fatalf("n2 has %+v, %v", c, ok)
			}
			if !n2.events.find("E_DMQ_HTABLE", `"cname":"k"`, `"action":"set"`) {
				t.Error("n2 raised no event for a change another node made")
			}
			// The same value back from n2 (as a node replaying it would): an echo.
			if err := n2.HTable().Set(ctx, "t", "k", "v", 0); err != nil {
				t.Fatal(err)
			}
			// A different value is news.
			if err := n2.HTable().Set(ctx, "t", "k", "w", 0); err != nil {
				t.Fatal(err)
			}
			own := n1.events.find("E_DMQ_HTABLE", `"cname":"k"`, `"strval":"v"`)
			news := n1.events.find("E_DMQ_HTABLE", `"cname":"k"`, `"strval":"w"`)
			if own != echo || !news {
				t.Errorf("n1 events %v: want its own value as an event only with echo on (%v), the new value always", n1.events.all("E_DMQ_HTABLE"), echo)
			}

			// usrloc and dialog: n2 sees them, n1 raises nothing unless echo.
			if err := n1.WriteUsrloc(ctx, ContactWrite{Contact: Contact{AoR: "alice", Contact: "sip:alice@192.0.2.1", Expires: time.Now().Add(time.Minute)}}, 0); err != nil {
				t.Fatal(err)
			}
			if cs := n2.Usrloc().Lookup("alice"); len(cs) != 1 || cs[0].RUID != ContactRUID("alice", "sip:alice@192.0.2.1") {
				t.Errorf("n2 alice = %+v", cs)
			}
			he, hid := DialogID("c1", "t1", 0)
			if err := n1.WriteDialog(ctx, DialogWrite{Dialog: Dialog{CallID: "c1", Tag1: "t1", HEntry: he, HID: hid, State: DialogConfirmed}}, 0); err != nil {
				t.Fatal(err)
			}
			if ds := n2.Dialogs().Dump(); len(ds) != 1 || ds[0].State != DialogConfirmed || ds[0].CallID != "c1" {
				t.Errorf("n2 dialogs = %+v", ds)
			}
			for _, name := range []string{"E_DMQ_USRLOC", "E_DMQ_DIALOG"} {
				if got := len(n1.events.all(name)) > 0; got != echo {
					t.Errorf("n1 %s events %v, want some only with echo on", name, n1.events.all(name))
				}
			}
		})
	}
}

func TestWriteBeforeJoinAndQuorum(t *testing.T) {
	c := testConfig(t, "sip:127.0.0.1:9") // nobody answers there
	n := startNode(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := n.WriteHTable(ctx, HTableWrite{Table: "t", Name: "k", Type: TypeInt, Int: 1}, 0)
	if !errors.Is(err, ErrNotJoined) {
		t.Fatalf("write before the join: %v, want ErrNotJoined", err)
	}
	if _, ok := n.HTable().Get("t", "k"); ok {
		t.Error("the refused write is in the mirror")
	}

	// n2 tells n1 of a node that never answers: a write to every active
	// node fails and names it; a quorum of one is met by n2.
	n1, n2 := twoNodes(t, false)
	dead, _ := ParseNodeAddr("sip:127.0.0.1:9")
	n1.list.MergeFrom([]NodeLine{{Addr: dead, Status: StatusActive, HasStatus: true}}, n2.Self(), true)
	if s := n1.status(dead.String()); s != "active" {
		t.Fatalf("dead node is %s in n1's list", s)
	}
	err = n1.WriteHTable(ctx, HTableWrite{Table: "t", Name: "q", Type: TypeInt, Int: 1}, 0)
	if err == nil || !strings.Contains(err.Error(), "1 of 2 active nodes took it, 2 needed") || !strings.Contains(err.Error(), dead.String()) {
		t.Fatalf("write with a dead node: %v, want it to fail and name %s", err, dead)
	}
	if err := n1.WriteHTable(ctx, HTableWrite{Table: "t", Name: "q", Type: TypeInt, Int: 2}, 1); err != nil {
		t.Fatalf("write with quorum=1: %v", err)
	}
	if c, ok := n2.HTable().Get("t", "q"); !ok || c.Int != 2 {
		t.Errorf("n2 has %+v, %v", c, ok)
	}
	if err := n1.WriteHTable(ctx, HTableWrite{Table: "", Name: "q"}, 0); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("write without a table: %v", err)
	}
}

func TestCoreHash(t *testing.T) {
	// Kamailio's own results are checked against real nodes in evi's
	// TestDMQBackendKamailio (a wrong h_entry is refused there with
	// "inconsistent hash data from peer"); here the properties.
	for _, s := range []string{"", "a", "abcd", "call-1@192.0.2.7", "\xff\xfe"} {
		if h := coreHash(s, 4096); h >= 4096 {
			t.Errorf("coreHash(%q, 4096) = %d", s, h)
		}
		if coreHash(s, 4096) != coreHash(s, 0)&4095 {
			t.Errorf("coreHash(%q) is not its full hash modulo the size", s)
		}
	}
	he1, hid1 := DialogID("c", "t", 0)
	he2, hid2 := DialogID("c", "t", 4096)
	if he1 != he2 || hid1 != hid2 || hid1&(1<<31) == 0 {
		t.Errorf("DialogID: %d:%d and %d:%d", he1, hid1, he2, hid2)
	}
}
