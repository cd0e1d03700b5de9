package dmq

import (
	"sort"
	"sync"
	"time"

	"github.com/valyala/fastjson"
)

// dmq_usrloc actions.
const (
	ulNone = iota
	ulUpdate
	ulRm
	ulSync
)

// Contact is one registered contact as dmq_usrloc replicates it.
type Contact struct {
	AoR          string
	RUID         string
	Contact      string
	Received     string
	Path         string
	CallID       string
	UserAgent    string
	Instance     string
	Expires      time.Time // zero: permanent
	CSeq         int
	Flags        int
	CFlags       int
	Q            int // -1: unspecified
	LastModified time.Time
	Methods      uint32
	RegID        int
	ServerID     int
}

// Usrloc observes dmq_usrloc: contacts per AoR with their expiry, kept from
// sync answers and updates. It never answers a sync request (it is not a
// registrar) and never writes.
type Usrloc struct {
	node *Node
	now  func() time.Time

	mu   sync.RWMutex
	aors map[string]map[string]*Contact // aor -> ruid -> contact
	// own holds the contacts this node wrote (aor NUL ruid -> contact URI):
	// the same contact coming back in a sync answer is an echo.
	own map[string]string
}

func newUsrloc(n *Node) *Usrloc {
	return &Usrloc{node: n, now: time.Now, aors: make(map[string]map[string]*Contact), own: make(map[string]string)}
}

// Channel implements Peer.
func (u *Usrloc) Channel() string { return ChannelUsrloc }

// SyncRequest implements Peer: {"action":3}; each node answers with one
// KDMQ per contact.
func (u *Usrloc) SyncRequest() []byte { return []byte(`{"action":3}`) }

// Handle implements Peer. Bodies that are not JSON objects get 400; unknown
// members are ignored, as dmq_usrloc logs and accepts them.
func (u *Usrloc) Handle(r *Request) int {
	if len(r.Body) == 0 {
		return 400
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(r.Body)
	if err != nil || v.Type() != fastjson.TypeObject {
		u.node.rl.WarnKey("usrloc_json "+r.Src.String(), "dmq: usrloc body is not a JSON object", "from", r.From.String(), "err", err)
		return 400
	}
	if multi := v.Get("multi"); multi != nil {
		o, err := multi.Object()
		if err != nil {
			return 400
		}
		code := 200
		o.Visit(func(_ []byte, cv *fastjson.Value) {
			if c := u.applyOne(cv, r.From); c != 200 {
				code = c
			}
		})
		return code
	}
	return u.applyOne(v, r.From)
}

func (u *Usrloc) applyOne(v *fastjson.Value, from NodeAddr) int {
	if v.Type() != fastjson.TypeObject {
		return 400
	}
	action := v.GetInt("action")
	switch action {
	case ulSync:
		return 200 // an observer has nothing to offer
	case ulUpdate, ulRm:
	default:
		return 400
	}
	c := contactFromJSON(v)
	if c.AoR == "" || c.RUID == "" {
		u.node.rl.WarnKey("usrloc_aor "+from.String(), "dmq: usrloc message without aor or ruid", "from", from.String())
		return 400
	}
	raw := v.MarshalTo(nil)
	if action == ulRm {
		if old, ok := u.remove(c.AoR, c.RUID); ok {
			u.event("delete", old, from, raw)
		}
		return 200
	}
	u.mu.Lock()
	m := u.aors[c.AoR]
	if m == nil {
		m = make(map[string]*Contact)
		u.aors[c.AoR] = m
	}
	m[c.RUID] = &c
	ownURI, own := u.own[c.AoR+"\x00"+c.RUID]
	echo := own && ownURI == c.Contact && !u.node.cfg.Echo
	u.mu.Unlock()
	u.gauge()
	if !echo {
		u.event("update", c, from, raw)
	}
	return 200
}

func contactFromJSON(v *fastjson.Value) Contact {
	s := func(k string) string { return string(v.GetStringBytes(k)) }
	c := Contact{
		AoR: s("aor"), RUID: s("ruid"), Contact: s("c"), Received: s("received"), Path: s("path"),
		CallID: s("callid"), UserAgent: s("user_agent"), Instance: s("instance"),
		CSeq: v.GetInt("cseq"), Flags: v.GetInt("flags"), CFlags: v.GetInt("cflags"), Q: v.GetInt("q"),
		Methods: uint32(v.GetUint64("methods")), RegID: v.GetInt("reg_id"), ServerID: v.GetInt("server_id"),
	}
	if e := v.GetInt64("expires"); e > 0 {
		c.Expires = time.Unix(e, 0)
	}
	if lm := v.GetInt64("last_modified"); lm > 0 {
		c.LastModified = time.Unix(lm, 0)
	}
	return c
}

func (u *Usrloc) remove(aor, ruid string) (Contact, bool) {
	u.mu.Lock()
	delete(u.own, aor+"\x00"+ruid)
	m := u.aors[aor]
	c, ok := m[ruid]
	if ok {
		delete(m, ruid)
		if len(m) == 0 {
			delete(u.aors, aor)
		}
	}
	u.mu.Unlock()
	if !ok {
		return Contact{}, false
	}
	u.gauge()
	return *c, true
}

// expire drops contacts past their expiry: dmq_usrloc does not replicate
// expiry, every node times its contacts out by itself.
func (u *Usrloc) expire() {
	now := u.now()
	var gone []Contact
	u.mu.Lock()
	for aor, m := range u.aors {
		for ruid, c := range m {
			if !c.Expires.IsZero() && !c.Expires.After(now) {
				gone = append(gone, *c)
				delete(m, ruid)
				delete(u.own, aor+"\x00"+ruid)
			}
		}
		if len(m) == 0 {
			delete(u.aors, aor)
		}
	}
	u.mu.Unlock()
	if len(gone) == 0 {
		return
	}
	u.gauge()
	for _, c := range gone {
		u.event("expired", c, u.node.self, nil)
	}
}

func (u *Usrloc) gauge() {
	u.node.metrics.contacts.With().Set(float64(u.Len()))
}

// Len is the number of contacts.
func (u *Usrloc) Len() int {
	u.mu.RLock()
	defer u.mu.RUnlock()
	n := 0
	for _, m := range u.aors {
		n += len(m)
	}
	return n
}

// Lookup returns the live contacts of an AoR, ordered by RUID.
func (u *Usrloc) Lookup(aor string) []Contact {
	u.mu.RLock()
	defer u.mu.RUnlock()
	return u.liveLocked(aor)
}

func (u *Usrloc) liveLocked(aor string) []Contact {
	now := u.now()
	var out []Contact
	for _, c := range u.aors[aor] {
		if c.Expires.IsZero() || c.Expires.After(now) {
			out = append(out, *c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].RUID < out[j].RUID })
	return out
}

// Dump returns every live contact, ordered by AoR and RUID.
func (u *Usrloc) Dump() []Contact {
	u.mu.RLock()
	defer u.mu.RUnlock()
	aors := make([]string, 0, len(u.aors))
	for a := range u.aors {
		aors = append(aors, a)
	}
	sort.Strings(aors)
	var out []Contact
	for _, a := range aors {
		out = append(out, u.liveLocked(a)...)
	}
	return out
}

func (u *Usrloc) event(action string, c Contact, from NodeAddr, raw []byte) {
	if u.node.opts.OnChange == nil {
		return
	}
	var exp int64
	if !c.Expires.IsZero() {
		exp = c.Expires.Unix()
	}
	u.node.emit("E_DMQ_USRLOC", jsonObject(
		"action", action, "aor", c.AoR, "ruid", c.RUID, "contact", c.Contact,
		"expires", exp, "node", from.String(), "body", raw))
}
