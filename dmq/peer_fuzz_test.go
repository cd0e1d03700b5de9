package dmq

import (
	"io"
	"log/slog"
	"testing"
)

// idleNode is a node that is configured but not running: peers can handle
// bodies, sends are no-ops.
func idleNode(t testing.TB) *Node {
	t.Helper()
	n, err := New(Config{Listen: "sip:127.0.0.1:5090", Seeds: []string{"sip:127.0.0.2:5060"}},
		Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), OnChange: func(name string, params []byte) {}})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// bodiesOf returns the recorded bodies of one channel as fuzz seeds.
func bodiesOf(f *testing.F, channel string) {
	for _, raw := range wireFiles(f) {
		m, err := ParseMessage(raw)
		if err != nil || !m.IsRequest() || channelOf(m) != channel {
			continue
		}
		f.Add(m.Body)
	}
}

// kam is the Kamailio node the bodies come from.
var kam = NodeAddr{Host: "127.0.0.2", Port: 5060}

func TestPeerAnswers(t *testing.T) {
	n := idleNode(t)
	tests := []struct {
		peer Peer
		body string
		want int
	}{
		{n.HTable(), `{"action":2,"htname":"repl","cname":"k1","type":2,"strval":"hello world","mode":1}`, 200},
		{n.HTable(), `{"action":2,"htname":"repl","cname":"k2","type":0,"intval":42,"mode":1}`, 200},
		{n.HTable(), `{"action":3,"htname":"repl","cname":"k2","type":0,"intval":300,"mode":0}`, 200},
		{n.HTable(), `{"action":4,"htname":"repl","cname":"k1","mode":0}`, 200},
		{n.HTable(), `{"action":1}`, 200},
		{n.HTable(), `{"cells":[{"htname":"repl","cname":"jint","type":0,"intval":7,"expire":0},{"bogus":1}]}`, 200},
		{n.HTable(), `{"action":5,"htname":"repl","type":2,"strval":"^j","mode":0}`, 200},
		{n.HTable(), `{"action":5,"htname":"repl","type":2,"strval":"(","mode":0}`, 500},
		{n.HTable(), `{"action":9,"htname":"repl","cname":"x"}`, 500},
		{n.HTable(), `{"action":2,"htname":"","cname":"x","type":0,"intval":1}`, 500},
		{n.HTable(), `{"action":2,"bogus":1}`, 400},
		{n.HTable(), `{"action":"2"}`, 400},
		{n.HTable(), `not json`, 400},
		{n.HTable(), ``, 400},
		{n.HTable(), `[]`, 400},
		{n.Usrloc(), `{"action":1,"aor":"alice","ruid":"r1","c":"sip:alice@127.0.0.1:5091","expires":1,"unknown":true}`, 200},
		{n.Usrloc(), `{"action":2,"aor":"alice","ruid":"r1"}`, 200},
		{n.Usrloc(), `{"action":3}`, 200},
		{n.Usrloc(), `{"multi":{"1":{"action":1,"aor":"bob","ruid":"r2","expires":0}}}`, 200},
		{n.Usrloc(), `{"action":1}`, 400},
		{n.Usrloc(), `"x"`, 400},
		{n.Dialogs(), `{"action":1,"h_entry":1,"h_id":2,"callid":"c","state":1}`, 200},
		{n.Dialogs(), `{"action":2,"h_entry":1,"h_id":2,"state":4}`, 200},
		{n.Dialogs(), `{"action":2,"h_entry":1,"h_id":2,"state":5}`, 200},
		{n.Dialogs(), `{"action":2,"h_entry":1,"h_id":2,"state":4}`, 200}, // late, after deletion: ignored
		{n.Dialogs(), `{"action":3,"h_entry":1,"h_id":2,"state":5}`, 200},
		{n.Dialogs(), `{"action":2,"h_entry":7,"h_id":7,"state":4}`, 500},
		{n.Dialogs(), `{"action":1,"h_entry":8,"h_id":8,"state":4}`, 200},
		{n.Dialogs(), `{"action":2,"h_entry":8,"h_id":8,"state":2}`, 200}, // backward: ignored
		{n.Dialogs(), `{"action":3,"h_entry":8,"h_id":8}`, 200},
		{n.Dialogs(), `{"action":4}`, 200},
		{n.Dialogs(), `{]`, 400},
	}
	n.HTable().markAsked(kam)
	for _, tc := range tests {
		if got := tc.peer.Handle(&Request{Channel: tc.peer.Channel(), Body: []byte(tc.body), From: kam, Known: true}); got != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.peer.Channel(), tc.body, got, tc.want)
		}
	}
	if c, ok := n.HTable().Get("repl", "k2"); !ok || c.Int != 42 || c.Expire.IsZero() {
		t.Errorf("k2 = %+v, %v; want 42 with an expiry", c, ok)
	}
	if _, ok := n.HTable().Get("repl", "jint"); ok {
		t.Error("jint survived the ^j regex removal")
	}
	if got := len(n.Usrloc().Lookup("bob")); got != 1 {
		t.Errorf("bob has %d contacts, want 1 (from a multi body)", got)
	}
	if n.Dialogs().Len() != 0 {
		t.Errorf("dialogs = %+v, want none after state 5", n.Dialogs().Dump())
	}
}

func FuzzHTableBody(f *testing.F) {
	bodiesOf(f, ChannelHTable)
	n := idleNode(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		n.HTable().markAsked(kam)
		code := n.HTable().Handle(&Request{Channel: ChannelHTable, Body: body, From: kam, Known: true})
		if code != 200 && code != 400 && code != 500 {
			t.Fatalf("htable answered %d", code)
		}
	})
}

func FuzzUsrlocBody(f *testing.F) {
	bodiesOf(f, ChannelUsrloc)
	n := idleNode(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		code := n.Usrloc().Handle(&Request{Channel: ChannelUsrloc, Body: body, From: kam, Known: true})
		if code != 200 && code != 400 {
			t.Fatalf("usrloc answered %d", code)
		}
		n.Usrloc().expire()
	})
}

func FuzzDialogBody(f *testing.F) {
	bodiesOf(f, ChannelDialog)
	n := idleNode(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		code := n.Dialogs().Handle(&Request{Channel: ChannelDialog, Body: body, From: kam, Known: true})
		if code != 200 && code != 400 && code != 500 {
			t.Fatalf("dialog answered %d", code)
		}
	})
}
