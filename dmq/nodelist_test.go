package dmq

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
)

func TestParseNodeLine(t *testing.T) {
	tests := []struct {
		in      string
		want    string // String() of the parsed line; "" = error expected
		wantErr string
	}{
		{in: "sip:127.0.0.2:5060;status=active", want: "sip:127.0.0.2:5060;status=active"},
		{in: "sip:127.0.0.2:5060;status=disabled", want: "sip:127.0.0.2:5060;status=disabled"},
		{in: "sip:127.0.0.2:5060;status=timeout", want: "sip:127.0.0.2:5060;status=timeout"},
		{in: "sip:127.0.0.2:5060", want: "sip:127.0.0.2:5060;status=pending"},
		{in: "sip:127.0.0.2", want: "sip:127.0.0.2;status=pending"},
		{in: "sip:node-b.example.com:5060;status=active", want: "sip:node-b.example.com:5060;status=active"},
		{in: "sip:[::1]:5060;status=active", want: "sip:[::1]:5060;status=active"},
		{in: "sip:127.0.0.2:5060;transport=tcp;status=active", want: "sip:127.0.0.2:5060;transport=tcp;status=active"},
		{in: "sip:127.0.0.2:5060;transport=udp;status=active", want: "sip:127.0.0.2:5060;status=active"},
		{in: "sip:127.0.0.2:5060;x=1;status=active", want: "sip:127.0.0.2:5060;status=active"},
		{in: "", wantErr: "empty"},
		{in: "sip:127.0.0.2:5060;status=alive", wantErr: "status"},
		{in: "sip:127.0.0.2:5060;status=", wantErr: "status"},
		{in: "sips:127.0.0.2:5060", wantErr: "scheme"},
		{in: "sip:user@127.0.0.2:5060", wantErr: "user part"},
		{in: "sip:127.0.0.2:0", wantErr: "port"},
		{in: "sip:127.0.0.2:65536", wantErr: "port"},
		{in: "sip:127.0.0.2:", wantErr: "port"},
		{in: "sip:127.0.0.2:50x", wantErr: "port"},
		{in: "sip::5060", wantErr: "host"},
		{in: "sip:bad_host:5060", wantErr: "host"},
		{in: "sip:-x.com:5060", wantErr: "host"},
		{in: "sip:127.0.0.2:5060;transport=ws", wantErr: "transport"},
		{in: "sip:127.0.0.2:5060 ;status=active", wantErr: "space"},
		{in: "sip:[1.2.3.4]:5060", wantErr: "IPv6"},
		{in: "sip:127.0.0.2:5060;;status=active", wantErr: "parameter"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			l, err := ParseNodeLine(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseNodeLine(%q) = %v, %v; want error containing %q", tc.in, l, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseNodeLine(%q): %v", tc.in, err)
			}
			if got := l.String(); got != tc.want {
				t.Fatalf("ParseNodeLine(%q).String() = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// The body that wedged Kamailio 5.6.3 (dmq-06) is refused whole.
func TestParseNodeListBlankLine(t *testing.T) {
	bodies := []string{
		"sip:127.0.0.9:5060;status=active\r\n\r\nsip:127.0.0.10:5060;status=active\r\n",
		"\r\n",
		"\r\nsip:127.0.0.9:5060;status=active\r\n",
		"sip:127.0.0.9:5060;status=active\r\n\r\n",
	}
	for _, b := range bodies {
		if lines, err := ParseNodeList([]byte(b)); err == nil {
			t.Errorf("ParseNodeList(%q) = %v, want an error", b, lines)
		}
	}
}

// Every recorded notification body parses, and formatting the parsed lines
// gives back Kamailio's bytes.
func TestNodeListGolden(t *testing.T) {
	seen := 0
	for name, raw := range wireFiles(t) {
		m, err := ParseMessage(raw)
		if err != nil {
			t.Fatal(err)
		}
		if ct, _ := m.Get("Content-Type"); ct != "text/plain" {
			continue
		}
		seen++
		lines, err := ParseNodeList(m.Body)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		got, err := FormatNodeList(lines)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !bytes.Equal(got, m.Body) {
			t.Errorf("%s: formatted %q, want %q", name, got, m.Body)
		}
	}
	if seen == 0 {
		t.Fatal("no node-list bodies among the golden files")
	}
}

func TestFormatNodeListRefusesBadLines(t *testing.T) {
	bad := []NodeLine{
		{Addr: NodeAddr{Host: "", Port: 5060}, Status: StatusActive},
		{Addr: NodeAddr{Host: "a b", Port: 5060}, Status: StatusActive},
		{Addr: NodeAddr{Host: "127.0.0.1", Port: 70000}, Status: StatusActive},
		{Addr: NodeAddr{Host: "127.0.0.1", Port: 5060}, Status: Status(42)},
		{Addr: NodeAddr{Host: "127.0.0.1", Port: 5060, Transport: "ws"}, Status: StatusActive},
		{Addr: NodeAddr{Host: "127.0.0.1\r\n", Port: 5060}, Status: StatusActive},
	}
	for _, l := range bad {
		if b, err := FormatNodeList([]NodeLine{l}); err == nil {
			t.Errorf("FormatNodeList(%+v) = %q, want an error", l, b)
		}
	}
}

func addr(t *testing.T, s string) NodeAddr {
	t.Helper()
	a, err := ParseNodeAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func lines(t *testing.T, body string) []NodeLine {
	t.Helper()
	l, err := ParseNodeList([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func status(t *testing.T, l *NodeList, s string) string {
	t.Helper()
	i, ok := l.Lookup(addr(t, s))
	if !ok {
		return "absent"
	}
	return i.Status.String()
}

// Merge follows extract_node_list: add unknown nodes with the line's status,
// overwrite known ones unless disabled or the line has no status, never
// touch self.
func TestNodeListMerge(t *testing.T) {
	self := addr(t, "sip:127.0.0.1:5090")
	l := NewNodeList(self)
	l.AddSeed(addr(t, "sip:127.0.0.2:5060"))

	ch := l.Merge(lines(t, "sip:127.0.0.2:5060;status=active\r\nsip:127.0.0.3:5060;status=active\r\nsip:127.0.0.1:5090;status=disabled\r\nsip:127.0.0.4:5060\r\n"))
	if len(ch) != 3 {
		t.Fatalf("changes = %+v, want 3 (seed active, .3 added, .4 added)", ch)
	}
	for s, want := range map[string]string{
		"sip:127.0.0.1:5090": "active", "sip:127.0.0.2:5060": "active",
		"sip:127.0.0.3:5060": "active", "sip:127.0.0.4:5060": "pending",
	} {
		if got := status(t, l, s); got != want {
			t.Errorf("%s = %s, want %s", s, got, want)
		}
	}
	// .3 times out while active: disabled; a body saying active does not revive it.
	if c := l.timedOut(addr(t, "sip:127.0.0.3:5060"), StatusActive); c == nil || c.New != StatusDisabled {
		t.Fatalf("timedOut = %+v, want disabled", c)
	}
	if ch := l.Merge(lines(t, "sip:127.0.0.3:5060;status=active\r\n")); len(ch) != 0 {
		t.Fatalf("disabled node revived by a body: %+v", ch)
	}
	// Another timeout while it was disabled at send time removes it.
	if c := l.timedOut(addr(t, "sip:127.0.0.3:5060"), StatusDisabled); c == nil || !c.Removed {
		t.Fatalf("timedOut = %+v, want removed", c)
	}
	if got := status(t, l, "sip:127.0.0.3:5060"); got != "absent" {
		t.Fatalf(".3 = %s, want absent", got)
	}
	// A seed never goes away: pending, however often it times out.
	for range 3 {
		l.timedOut(addr(t, "sip:127.0.0.2:5060"), StatusDisabled)
	}
	if got := status(t, l, "sip:127.0.0.2:5060"); got != "pending" {
		t.Fatalf("seed = %s, want pending", got)
	}
	// A 200 from the seed makes it active again and asks for one sync.
	if c, sync := l.seen(addr(t, "sip:127.0.0.2:5060")); c == nil || c.New != StatusActive || !sync {
		t.Fatalf("seen = %+v, %v", c, sync)
	}
	if _, sync := l.seen(addr(t, "sip:127.0.0.2:5060")); sync {
		t.Fatal("second 200 asked for another sync")
	}
	body, err := l.Body()
	if err != nil {
		t.Fatal(err)
	}
	if want := "sip:127.0.0.1:5090;status=active\r\nsip:127.0.0.2:5060;status=active\r\n"; string(body) != want {
		t.Fatalf("Body = %q, want %q", body, want)
	}
}

func FuzzParseNodeList(f *testing.F) {
	for _, raw := range wireFiles(f) {
		if m, err := ParseMessage(raw); err == nil {
			if ct, _ := m.Get("Content-Type"); ct == "text/plain" {
				f.Add(m.Body)
			}
		}
	}
	f.Add([]byte("sip:127.0.0.9:5060;status=active\r\n\r\nsip:127.0.0.10:5060;status=active\r\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		lines, err := ParseNodeList(body)
		if err != nil {
			return
		}
		// Whatever is accepted can be sent back without producing a line that
		// Kamailio could choke on: formatting validates and must not fail.
		out, err := FormatNodeList(lines)
		if err != nil {
			t.Fatalf("accepted %q but cannot format it: %v", body, err)
		}
		again, err := ParseNodeList(out)
		if err != nil || len(again) != len(lines) {
			t.Fatalf("formatted %q does not parse back: %v", out, err)
		}
		l := NewNodeList(NodeAddr{Host: "127.0.0.1", Port: 5090})
		l.Merge(lines)
		if _, err := l.Body(); err != nil {
			t.Fatalf("list body after merging %q: %v", body, err)
		}
	})
}

// A list longer than one datagram goes out in several bodies, each with
// this node's line first and none over the limit, together holding every
// active node once.
func TestNodeListBodiesSplit(t *testing.T) {
	self := addr(t, "sip:127.0.0.1:5090")
	l := NewNodeList(self)
	l.Merge(lines(t, nodeLines(1000, 0)))
	bodies, err := l.Bodies(4000)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[NodeAddr]bool{}
	for i, b := range bodies {
		if len(b) > 4000 {
			t.Errorf("body %d: %d bytes", i, len(b))
		}
		ls, err := ParseNodeList(b)
		if err != nil || ls[0].Addr != self {
			t.Fatalf("body %d: %v, first line %+v", i, err, ls[0])
		}
		for _, x := range ls[1:] {
			if seen[x.Addr] {
				t.Errorf("%s twice", x.Addr)
			}
			seen[x.Addr] = true
		}
	}
	if len(seen) != 1000 {
		t.Errorf("%d nodes in the bodies, want 1000", len(seen))
	}
	if b, _ := l.Body(); len(b) > maxNodeListBody {
		t.Errorf("Body is %d bytes", len(b))
	}
}

// FuzzNotificationBody runs a notification body through the node as it
// comes from a stranger and from a node: never more than max_nodes, and
// the answer always fits a datagram.
func FuzzNotificationBody(f *testing.F) {
	bodiesOf(f, ChannelNotification)
	f.Add([]byte(nodeLines(1000, 0)))
	n := idleNode(f)
	n.cfg.MaxNodes = 8
	n.list.SetMax(8)
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, from := range []string{"sip:127.0.0.9:5060", "sip:127.0.0.2:5060"} {
			raw := kdmqFrom(ChannelNotification, "sip:127.0.0.1:5090", from, string(body))
			m, err := ParseMessage([]byte(strings.ReplaceAll(raw, "LOCALPORT", "5060")))
			if err != nil {
				return
			}
			src := netip.MustParseAddrPort(strings.TrimPrefix(from, "sip:"))
			resp := n.handleRequest(m, src)
			if resp == nil {
				t.Fatal("no answer")
			}
			if b := resp.Bytes(); len(b) > 65507 {
				t.Fatalf("answer of %d bytes", len(b))
			}
			if l := n.list.Len(); l > 8 {
				t.Fatalf("%d nodes, max_nodes 8", l)
			}
		}
	})
}
