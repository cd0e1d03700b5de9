package dmq

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Status is a node's state as Kamailio's dmq module keeps it.
type Status int

// The statuses of a node-list line (dmq_node_t.status).
const (
	StatusPending Status = iota
	StatusActive
	StatusDisabled
	StatusTimeout
)

func (s Status) String() string {
	switch s {
	case StatusActive:
		return "active"
	case StatusDisabled:
		return "disabled"
	case StatusTimeout:
		return "timeout"
	}
	return "pending"
}

func parseStatus(s string) (Status, bool) {
	switch s {
	case "active":
		return StatusActive, true
	case "disabled":
		return StatusDisabled, true
	case "timeout":
		return StatusTimeout, true
	case "pending":
		return StatusPending, true
	}
	return 0, false
}

// NodeAddr is a node's identity: host and port as written, and the transport
// ("" for UDP). Two addresses are the same node only when all three are equal
// strings, as in Kamailio's cmp_dmq_node.
type NodeAddr struct {
	Host      string
	Port      int
	Transport string
}

// String formats the node's URI as it appears in node lists and From headers.
func (a NodeAddr) String() string {
	s := "sip:" + hostPort(a.Host, a.Port)
	if a.Transport != "" {
		s += ";transport=" + a.Transport
	}
	return s
}

// ParseNodeAddr parses a node URI such as sip:127.0.0.1:5060, the form of
// `listen` and `seeds`. It requires an explicit port, so that the identity
// sipside announces is exactly the one its peers store.
func ParseNodeAddr(s string) (NodeAddr, error) {
	u, err := ParseURI(s)
	if err != nil {
		return NodeAddr{}, err
	}
	if u.User != "" {
		return NodeAddr{}, fmt.Errorf("node uri %q: want sip:HOST:PORT without a user part", s)
	}
	if u.Port == 0 {
		return NodeAddr{}, fmt.Errorf("node uri %q: add the port (sip:HOST:PORT); Kamailio treats host and host:5060 as different nodes", s)
	}
	a, err := addrFromURI(u)
	if err != nil {
		return NodeAddr{}, fmt.Errorf("node uri %q: %w", s, err)
	}
	return a, nil
}

func addrFromURI(u URI) (NodeAddr, error) {
	a := NodeAddr{Host: u.Host, Port: u.Port}
	if t, ok := u.Param("transport"); ok {
		switch t = strings.ToLower(t); t {
		case "udp":
		case "tcp", "tls", "sctp":
			a.Transport = t
		default:
			return a, fmt.Errorf("transport %q is not udp, tcp, tls or sctp", t)
		}
	}
	return a, nil
}

// speakable reports whether this node can talk to a: UDP or TCP.
func (a NodeAddr) speakable() bool { return a.Transport == "" || a.Transport == "tcp" }

// udpAddr resolves the address to send to. Port 0 means 5060, the SIP default.
func (a NodeAddr) udpAddr() (netip.AddrPort, error) {
	port := a.Port
	if port == 0 {
		port = 5060
	}
	h := strings.TrimSuffix(strings.TrimPrefix(a.Host, "["), "]")
	ip, err := netip.ParseAddr(h)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(port)), nil
}

// NodeLine is one line of a notification_peer body.
type NodeLine struct {
	Addr      NodeAddr
	Status    Status
	HasStatus bool // a line without ;status= means pending, and never overwrites
}

// String formats the line as Kamailio's build_node_str does.
func (l NodeLine) String() string { return l.Addr.String() + ";status=" + l.Status.String() }

// ParseNodeLine parses and validates one node-list line. Anything Kamailio
// 5.6.3 could not turn into a node (and would deadlock on) is an error here.
func ParseNodeLine(line string) (NodeLine, error) {
	if line == "" {
		return NodeLine{}, fmt.Errorf("empty node line")
	}
	if len(line) > maxNodeLineLen {
		// Kamailio keeps node URIs in 255 bytes (MAXDMQURILEN); a longer
		// line is no node's, and bounding it bounds every body we build.
		return NodeLine{}, fmt.Errorf("node line %q: %d bytes, more than %d", truncate(line, 60), len(line), maxNodeLineLen)
	}
	u, err := ParseURI(line)
	if err != nil {
		return NodeLine{}, err
	}
	if u.User != "" {
		return NodeLine{}, fmt.Errorf("node line %q: has a user part", truncate(line, 60))
	}
	a, err := addrFromURI(u)
	if err != nil {
		return NodeLine{}, fmt.Errorf("node line %q: %w", truncate(line, 60), err)
	}
	nl := NodeLine{Addr: a}
	if s, ok := u.Param("status"); ok {
		st, ok := parseStatus(s)
		if !ok {
			return NodeLine{}, fmt.Errorf("node line %q: status %q is not active, disabled, timeout or pending", truncate(line, 60), s)
		}
		nl.Status, nl.HasStatus = st, true
	}
	return nl, nil
}

// maxNodeLineLen is the longest node-list line accepted or sent.
const maxNodeLineLen = 255

// maxNodeListBody is the most body one notification carries: with the SIP
// headers it stays under the 65,507 bytes of a UDP datagram (the size
// Kamailio cuts htable sync answers at, too).
const maxNodeListBody = 60000

// ParseNodeList parses a notification body. It is all or nothing: one bad
// line rejects the body, because half a list applied is a list that lies.
// Lines end with CRLF or LF; the last one may lack it; no blank lines.
func ParseNodeList(body []byte) ([]NodeLine, error) {
	if len(body) == 0 {
		return nil, nil
	}
	text := strings.TrimSuffix(string(body), "\n")
	text = strings.TrimSuffix(text, "\r")
	if len(text) == 0 {
		return nil, fmt.Errorf("node list is a blank line")
	}
	raw := strings.Split(text, "\n")
	if len(raw) > 1024 {
		return nil, fmt.Errorf("node list has %d lines; refusing more than 1024", len(raw))
	}
	out := make([]NodeLine, 0, len(raw))
	for i, l := range raw {
		l = strings.TrimSuffix(l, "\r")
		nl, err := ParseNodeLine(l)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		out = append(out, nl)
	}
	return out, nil
}

// FormatNodeList builds a body, every line validated by parsing it back.
func FormatNodeList(lines []NodeLine) ([]byte, error) {
	var b bytes.Buffer
	for _, l := range lines {
		s := l.String()
		back, err := ParseNodeLine(s)
		if err != nil || back.Addr != l.Addr || back.Status != l.Status {
			return nil, fmt.Errorf("refusing to send node line %q: %v", s, err)
		}
		b.WriteString(s)
		b.WriteString("\r\n")
	}
	return b.Bytes(), nil
}

// NodeInfo is a snapshot of one entry of the node list.
type NodeInfo struct {
	Addr     NodeAddr
	Status   Status
	Local    bool      // this node
	Seed     bool      // a configured notification address: never deleted
	Changed  time.Time // last status change
	LastSeen time.Time // last request or 200 received from it
}

type nodeEntry struct {
	NodeInfo
	pinging bool // one outstanding notification at a time
	synced  bool // init sync requested since it last became active
}

// NodeChange is a status transition produced by the list.
type NodeChange struct {
	Addr    NodeAddr
	Old     Status
	New     Status
	Added   bool
	Removed bool
}

// NodeList is the node table with Kamailio's merge rules. Order is newest
// first, as in Kamailio, so that bodies look alike.
type NodeList struct {
	mu    sync.Mutex
	self  NodeAddr
	local Status
	nodes []*nodeEntry
	now   func() time.Time
	max   int // nodes besides self; 0: no limit
}

// SetMax caps the number of nodes besides self; additions beyond it are
// refused (seeds are always kept).
func (l *NodeList) SetMax(n int) {
	l.mu.Lock()
	l.max = n
	l.mu.Unlock()
}

func (l *NodeList) fullLocked() bool { return l.max > 0 && len(l.nodes) >= l.max }

// Len is the number of nodes besides self.
func (l *NodeList) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.nodes)
}

// NewNodeList returns a list holding only self, active.
func NewNodeList(self NodeAddr) *NodeList {
	return &NodeList{self: self, local: StatusActive, now: time.Now}
}

func (l *NodeList) find(a NodeAddr) *nodeEntry {
	for _, n := range l.nodes {
		if n.Addr == a {
			return n
		}
	}
	return nil
}

// AddSeed adds a notification address as pending.
func (l *NodeList) AddSeed(a NodeAddr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a == l.self {
		return
	}
	if n := l.find(a); n != nil {
		n.Seed = true
		return
	}
	l.nodes = append([]*nodeEntry{{NodeInfo: NodeInfo{Addr: a, Status: StatusPending, Seed: true, Changed: l.now()}}}, l.nodes...)
}

// Merge applies received lines with extract_node_list's rules, trusting
// every line: an unknown node is added with the line's status (while the
// list has room); a known one takes the line's status unless the line has
// none or the node is disabled (a disabled node comes back only by answering
// a ping). Self is never changed.
func (l *NodeList) Merge(lines []NodeLine) []NodeChange {
	return l.merge(lines, func(NodeAddr) bool { return true }, true).Changes
}

// MergeResult is what MergeFrom did with a body.
type MergeResult struct {
	Changes []NodeChange
	Foreign int // lines about other nodes from a sender that is not a node here
	OverCap int // lines that would have added a node beyond the cap
}

// MergeFrom applies a body received from sender, whose address has been
// checked against the packet's source. Only the sender's own line may
// change a known node's status (a node speaks for itself: a stranger must
// not disable or revive another node); lines about other nodes may only add
// nodes unknown here, and only when the sender is a node of this list
// (member), as Kamailio's dmq_is_from_node would admit it. Anything else is
// ignored and counted.
func (l *NodeList) MergeFrom(lines []NodeLine, sender NodeAddr, member bool) MergeResult {
	return l.merge(lines, func(a NodeAddr) bool { return a == sender }, member)
}

func (l *NodeList) merge(lines []NodeLine, speaksFor func(NodeAddr) bool, member bool) MergeResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	var r MergeResult
	now := l.now()
	for _, nl := range lines {
		if nl.Addr == l.self {
			continue
		}
		own := speaksFor(nl.Addr)
		if !own && !member {
			r.Foreign++
			continue
		}
		n := l.find(nl.Addr)
		if n == nil {
			if l.fullLocked() {
				r.OverCap++
				continue
			}
			n = &nodeEntry{NodeInfo: NodeInfo{Addr: nl.Addr, Status: nl.Status, Changed: now}}
			l.nodes = append([]*nodeEntry{n}, l.nodes...)
			r.Changes = append(r.Changes, NodeChange{Addr: nl.Addr, Old: StatusPending, New: nl.Status, Added: true})
			continue
		}
		if !own || !nl.HasStatus || n.Status == nl.Status || n.Status == StatusDisabled {
			continue
		}
		r.Changes = append(r.Changes, l.setLocked(n, nl.Status, now))
	}
	return r
}

func (l *NodeList) setLocked(n *nodeEntry, s Status, now time.Time) NodeChange {
	c := NodeChange{Addr: n.Addr, Old: n.Status, New: s}
	n.Status, n.Changed = s, now
	if s != StatusActive {
		n.synced = false
	}
	return c
}

// seen marks a node active because it talked to us directly (a 200 to our
// notification), whatever its status was. It returns the change, if any, and
// whether the node still needs its init sync.
func (l *NodeList) seen(a NodeAddr) (*NodeChange, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a == l.self {
		return nil, false
	}
	now := l.now()
	n := l.find(a)
	var c *NodeChange
	if n == nil {
		if l.fullLocked() {
			return nil, false
		}
		n = &nodeEntry{NodeInfo: NodeInfo{Addr: a, Status: StatusActive, Changed: now}}
		l.nodes = append([]*nodeEntry{n}, l.nodes...)
		c = &NodeChange{Addr: a, Old: StatusPending, New: StatusActive, Added: true}
	} else if n.Status != StatusActive {
		ch := l.setLocked(n, StatusActive, now)
		c = &ch
	}
	n.LastSeen = now
	needSync := !n.synced
	n.synced = true
	return c, needSync
}

// requestFrom records that a node sent us a notification; the body's merge
// has already set its status. It returns whether it needs its init sync.
func (l *NodeList) requestFrom(a NodeAddr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.find(a)
	if n == nil || n.Status != StatusActive {
		return false
	}
	n.LastSeen = l.now()
	need := !n.synced
	n.synced = true
	return need
}

// timedOut applies the 408 rules of dmq's notification callback: a seed goes
// pending and stays; a node already disabled when the request was sent is
// removed; any other node is disabled.
func (l *NodeList) timedOut(a NodeAddr, statusAtSend Status) *NodeChange {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.find(a)
	if n == nil {
		return nil
	}
	now := l.now()
	switch {
	case n.Seed:
		if n.Status == StatusPending {
			return nil
		}
		c := l.setLocked(n, StatusPending, now)
		return &c
	case statusAtSend == StatusDisabled:
		for i, e := range l.nodes {
			if e == n {
				l.nodes = append(l.nodes[:i], l.nodes[i+1:]...)
				break
			}
		}
		return &NodeChange{Addr: a, Old: n.Status, New: n.Status, Removed: true}
	case n.Status != StatusDisabled:
		c := l.setLocked(n, StatusDisabled, now)
		return &c
	}
	return nil
}

// startPing marks a notification in flight to a; false when one already is.
func (l *NodeList) startPing(a NodeAddr) (Status, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.find(a)
	if n == nil || n.pinging {
		return 0, false
	}
	n.pinging = true
	return n.Status, true
}

func (l *NodeList) endPing(a NodeAddr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.find(a); n != nil {
		n.pinging = false
	}
}

// setLocal sets this node's own status (disabled when leaving).
func (l *NodeList) setLocal(s Status) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.local = s
}

// Body is the list this node announces, itself and the active nodes, cut
// to what fits one datagram (the first of Bodies).
func (l *NodeList) Body() ([]byte, error) {
	bodies, err := l.Bodies(maxNodeListBody)
	if err != nil {
		return nil, err
	}
	return bodies[0], nil
}

// Bodies is the list this node announces split into bodies of at most limit
// bytes, each starting with this node's own line. Kamailio merges every
// notification into its list, so several bodies add up to the whole list;
// none is ever too large for a datagram (a 64 KB body fails every send with
// EMSGSIZE, and with it every ping).
func (l *NodeList) Bodies(limit int) ([][]byte, error) {
	l.mu.Lock()
	selfLine := NodeLine{Addr: l.self, Status: l.local, HasStatus: true}
	var others []NodeLine
	for _, n := range l.nodes {
		if n.Status == StatusActive {
			others = append(others, NodeLine{Addr: n.Addr, Status: StatusActive, HasStatus: true})
		}
	}
	l.mu.Unlock()
	head, err := FormatNodeList([]NodeLine{selfLine})
	if err != nil {
		return nil, err
	}
	var out [][]byte
	body := append([]byte(nil), head...)
	for _, o := range others {
		line, err := FormatNodeList([]NodeLine{o})
		if err != nil {
			return nil, err
		}
		if len(line)+len(head) > limit {
			continue // cannot be sent in any body; ParseNodeLine keeps such lines out
		}
		if len(body)+len(line) > limit {
			out = append(out, body)
			body = append([]byte(nil), head...)
		}
		body = append(body, line...)
	}
	return append(out, body), nil
}

// Snapshot returns every node, self first.
func (l *NodeList) Snapshot() []NodeInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := []NodeInfo{{Addr: l.self, Status: l.local, Local: true}}
	for _, n := range l.nodes {
		out = append(out, n.NodeInfo)
	}
	return out
}

// Others returns the non-local nodes, optionally only the active ones.
func (l *NodeList) Others(activeOnly bool) []NodeInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []NodeInfo
	for _, n := range l.nodes {
		if !activeOnly || n.Status == StatusActive {
			out = append(out, n.NodeInfo)
		}
	}
	return out
}

// Lookup returns a node's entry.
func (l *NodeList) Lookup(a NodeAddr) (NodeInfo, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a == l.self {
		return NodeInfo{Addr: l.self, Status: l.local, Local: true}, true
	}
	if n := l.find(a); n != nil {
		return n.NodeInfo, true
	}
	return NodeInfo{}, false
}
