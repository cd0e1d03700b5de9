package dmq

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"
	"time"
)

// ErrNotJoined is the error of a write made before the node has exchanged a
// notification with any node of the bus: nobody would take it yet.
var ErrNotJoined = errors.New("dmq: this node has not joined the bus yet (no DMQ node answered a notification)")

// ErrNoNodes is the error of a write while no other node is active.
var ErrNoNodes = errors.New("dmq: no active DMQ node to write to")

// IsJoined reports whether the node has joined the bus.
func (n *Node) IsJoined() bool {
	select {
	case <-n.joined:
		return true
	default:
		return false
	}
}

// HasPeer reports whether the node runs the peer of channel.
func (n *Node) HasPeer(channel string) bool {
	_, ok := n.peers[channel]
	return ok
}

// broadcastQuorum sends body to every active node, as Broadcast, and
// succeeds when at least quorum of them answered 200 (quorum <= 0: all of
// them). A write nobody takes is no delivery: with no active node it fails.
func (n *Node) broadcastQuorum(ctx context.Context, channel string, body []byte, quorum int) error {
	if !n.IsJoined() {
		return ErrNotJoined
	}
	var others []NodeInfo
	for _, o := range n.list.Others(true) {
		if o.Addr.speakable() {
			others = append(others, o)
		}
	}
	if len(others) == 0 {
		return ErrNoNodes
	}
	errs := make([]error, len(others))
	var wg sync.WaitGroup
	for i, o := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := n.Send(ctx, o.Addr, channel, "application/json", body, 1)
			switch {
			case err != nil:
				errs[i] = fmt.Errorf("%s: %w", o.Addr, err)
			case resp.StatusCode != 200:
				errs[i] = fmt.Errorf("%s answered %d %s", o.Addr, resp.StatusCode, resp.Reason)
			}
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		}
	}
	need := len(others)
	if quorum > 0 && quorum < need {
		need = quorum
	}
	if ok >= need {
		return nil
	}
	return fmt.Errorf("%d of %d active nodes took it, %d needed: %w", ok, len(others), need, errors.Join(errs...))
}

// HTableWrite is one htable change made through Write.
type HTableWrite struct {
	Table, Name string
	Delete      bool
	Type        int // TypeInt or TypeStr
	Int         int64
	Str         string
	Expire      time.Duration // > 0: a set-expire follows the set
}

// Write applies w to the mirror and to every active node (or quorum of
// them), as Kamailio's own replication does. Unlike Set and Delete it never
// raises an event for its own change unless [dmq] echo is on: a route that
// writes what it also reads must not feed itself.
func (h *HTable) Write(ctx context.Context, w HTableWrite, quorum int) error {
	if w.Table == "" || w.Name == "" {
		return errors.New("htable write: table and name must not be empty")
	}
	if !h.node.IsJoined() {
		return ErrNotJoined
	}
	if w.Delete {
		if c, ok := h.remove(w.Table, w.Name); ok && h.node.cfg.Echo {
			h.event("delete", c, h.node.self)
		}
		body := jsonObject("action", htDelCell, "htname", w.Table, "cname", w.Name, "mode", 0)
		if err := h.node.broadcastQuorum(ctx, ChannelHTable, body, quorum); err != nil {
			return fmt.Errorf("htable delete %s=>%s: %w", w.Table, w.Name, err)
		}
		return nil
	}
	c := Cell{Table: w.Table, Name: w.Name, Type: w.Type & TypeStr, Int: w.Int, Str: w.Str}
	if !h.storeOwn(c) {
		return fmt.Errorf("htable set %s=>%s: the mirror of %s holds dmq.max_cells (%d) cells; raise max_cells or delete some", c.Table, c.Name, c.Table, h.maxCells)
	}
	if h.node.cfg.Echo {
		h.event("set", c, h.node.self)
	}
	if err := h.node.broadcastQuorum(ctx, ChannelHTable, htActionBody(htSetCell, c, 1), quorum); err != nil {
		return fmt.Errorf("htable set %s=>%s: %w", c.Table, c.Name, err)
	}
	if w.Expire > 0 {
		secs := int64((w.Expire + time.Second - 1) / time.Second)
		if c, ok := h.setExpire(c.Table, c.Name, secs); ok && h.node.cfg.Echo {
			h.event("set_expire", c, h.node.self)
		}
		body := htActionBody(htSetCellExpire, Cell{Table: c.Table, Name: c.Name, Type: TypeInt, Int: secs}, 0)
		if err := h.node.broadcastQuorum(ctx, ChannelHTable, body, quorum); err != nil {
			return fmt.Errorf("htable set expire %s=>%s: %w", c.Table, c.Name, err)
		}
	}
	return nil
}

// ContactWrite is one usrloc change made through Write: a contact inserted
// (or refreshed) or deleted for an AoR, as dmq_usrloc replicates it.
type ContactWrite struct {
	Contact
	Delete bool
}

// ContactRUID is the RUID sipside gives a contact it writes: the same AoR
// and contact always get the same one, so a later delete (or refresh) finds
// the contact that an earlier insert made on every node (dmq_usrloc looks
// contacts up by RUID).
func ContactRUID(aor, contact string) string {
	h := fnv.New64a()
	h.Write([]byte(aor))
	h.Write([]byte{0})
	h.Write([]byte(contact))
	return "sipside-" + strconv.FormatUint(h.Sum64(), 16)
}

// Write sends a contact insert or delete to every active node (or quorum of
// them) and applies it to the view. The view raises no event for it unless
// [dmq] echo is on.
func (u *Usrloc) Write(ctx context.Context, w ContactWrite, quorum int) error {
	c := w.Contact
	if c.AoR == "" || c.Contact == "" {
		return errors.New("usrloc write: aor and contact must not be empty")
	}
	if !u.node.IsJoined() {
		return ErrNotJoined
	}
	if c.RUID == "" {
		c.RUID = ContactRUID(c.AoR, c.Contact)
	}
	if c.LastModified.IsZero() {
		c.LastModified = u.now()
	}
	if c.CallID == "" {
		c.CallID = c.RUID + "@sipside"
	}
	if c.Q == 0 {
		c.Q = -1
	}
	if c.Methods == 0 {
		c.Methods = 0xffffffff
	}
	action := ulUpdate
	if w.Delete {
		action = ulRm
	}
	body := contactBody(action, c)
	if w.Delete {
		if old, ok := u.remove(c.AoR, c.RUID); ok && u.node.cfg.Echo {
			u.event("delete", old, u.node.self, body)
		}
	} else {
		u.mu.Lock()
		m := u.aors[c.AoR]
		if m == nil {
			m = make(map[string]*Contact)
			u.aors[c.AoR] = m
		}
		cc := c
		m[c.RUID] = &cc
		u.own[c.AoR+"\x00"+c.RUID] = c.Contact
		u.mu.Unlock()
		u.gauge()
		if u.node.cfg.Echo {
			u.event("update", c, u.node.self, body)
		}
	}
	if err := u.node.broadcastQuorum(ctx, ChannelUsrloc, body, quorum); err != nil {
		verb := "insert"
		if w.Delete {
			verb = "delete"
		}
		return fmt.Errorf("usrloc %s %s %s: %w", verb, c.AoR, c.Contact, err)
	}
	return nil
}

// contactBody builds what dmq_usrloc's usrloc_dmq_send_contact builds,
// member order included.
func contactBody(action int, c Contact) []byte {
	unix := func(t time.Time) int64 {
		if t.IsZero() {
			return 0
		}
		return t.Unix()
	}
	return jsonObject("action", action, "aor", c.AoR, "ruid", c.RUID, "c", c.Contact,
		"received", c.Received, "path", c.Path, "callid", c.CallID, "user_agent", c.UserAgent,
		"instance", c.Instance, "expires", unix(c.Expires), "cseq", c.CSeq, "flags", c.Flags,
		"cflags", c.CFlags, "q", c.Q, "last_modified", unix(c.LastModified),
		"methods", int64(c.Methods), "reg_id", c.RegID, "server_id", c.ServerID)
}

// DialogWrite is one dialog change made through Write.
//
// Update creates the dialog on every node that lacks it (the dialog
// module builds it from callid, from_uri, to_uri, req_uri and tag1) and
// then moves it to State; Delete removes it. HEntry and HID are the
// dialog's identity on every node (see DialogID).
type DialogWrite struct {
	Dialog
	Delete bool
}

// DialogID gives a dialog that sipside writes its h_entry and h_id. The
// dialog module checks h_entry against its own hash of the Call-ID
// ("inconsistent hash data from peer" otherwise), so it is Kamailio's
// core_hash of the Call-ID modulo hashSize (the module's hash_size, 4096 by
// default). h_id has its top bit set, far above the ids Kamailio counts up
// from for its own dialogs; the same call always gets the same pair, so a
// later state change or delete finds it.
func DialogID(callid, fromTag string, hashSize uint32) (hEntry, hID uint32) {
	if hashSize == 0 {
		hashSize = 4096
	}
	h := fnv.New32a()
	h.Write([]byte(callid))
	h.Write([]byte{0})
	h.Write([]byte(fromTag))
	return coreHash(callid, hashSize), h.Sum32() | 1<<31
}

// coreHash is Kamailio's core_hash(s, NULL, size) (hashes.h). C's plain
// char is signed on x86, so bytes above 0x7f count as negative there (an
// arm64 build differs for such Call-IDs; SIP Call-IDs are ASCII).
func coreHash(s string, size uint32) uint32 {
	c := func(i int) uint32 { return uint32(int32(int8(s[i]))) }
	var h, v uint32
	i := 0
	for ; i+4 <= len(s); i += 4 {
		v = c(i)<<24 + c(i+1)<<16 + c(i+2)<<8 + c(i+3)
		h += v ^ (v >> 3)
	}
	v = 0
	for ; i < len(s); i++ {
		v <<= 8
		v += c(i)
	}
	h += v ^ (v >> 3)
	h = (h + (h >> 11)) + ((h >> 13) + (h >> 23))
	if size == 0 {
		return h
	}
	return h & (size - 1)
}

// Write sends a dialog update (and state) or removal to every active node
// (or quorum of them) and applies it to the view, with no event of its own
// unless [dmq] echo is on.
func (d *Dialogs) Write(ctx context.Context, w DialogWrite, quorum int) error {
	dl := w.Dialog
	if dl.CallID == "" {
		return errors.New("dialog write: callid must not be empty")
	}
	if !d.node.IsJoined() {
		return ErrNotJoined
	}
	key := dl.Key()
	var bodies [][]byte
	if w.Delete {
		bodies = append(bodies, jsonObject("action", dlgRm, "h_entry", int64(dl.HEntry), "h_id", int64(dl.HID), "state", DialogDeleted))
	} else {
		if dl.State == 0 {
			dl.State = DialogConfirmed
		}
		if dl.InitTS.IsZero() {
			dl.InitTS = d.now()
		}
		if dl.StartTS.IsZero() && dl.State >= DialogConfirmedNA {
			dl.StartTS = d.now()
		}
		if dl.Lifetime == 0 {
			dl.Lifetime = 3600
		}
		// The module creates a dialog only from an update in state 1 and
		// moves it with state changes, as its own replication does.
		bodies = append(bodies,
			jsonObject("action", dlgUpdate, "h_entry", int64(dl.HEntry), "h_id", int64(dl.HID),
				"init_ts", dl.InitTS.Unix(), "callid", dl.CallID, "from_uri", dl.FromURI, "to_uri", dl.ToURI,
				"req_uri", dl.ReqURI, "tag1", dl.Tag1, "cseq1", "1", "route_set1", "", "contact1", dl.FromURI,
				"state", DialogUnconfirmed))
		if dl.State > DialogUnconfirmed {
			var start int64
			if !dl.StartTS.IsZero() {
				start = dl.StartTS.Unix()
			}
			bodies = append(bodies, jsonObject("action", dlgState, "h_entry", int64(dl.HEntry), "h_id", int64(dl.HID),
				"state", dl.State, "start_ts", start, "lifetime", dl.Lifetime, "tag1", dl.Tag1, "tag2", dl.Tag2,
				"cseq1", "1", "cseq2", "0", "route_set1", "", "route_set2", "", "contact1", dl.FromURI, "contact2", dl.ToURI))
		}
	}
	d.mu.Lock()
	event := "update"
	if w.Delete || dl.State == DialogDeleted {
		delete(d.dialogs, key)
		d.gone[key] = d.now().Add(tombstoneTTL)
		event = "delete"
	} else {
		delete(d.gone, key)
		cp := dl
		d.dialogs[key] = &cp
	}
	n := len(d.dialogs)
	d.mu.Unlock()
	d.node.metrics.dialogs.With().Set(float64(n))
	if d.node.cfg.Echo {
		d.event(event, dl, d.node.self, bodies[len(bodies)-1])
	}
	for _, body := range bodies {
		if err := d.node.broadcastQuorum(ctx, ChannelDialog, body, quorum); err != nil {
			return fmt.Errorf("dialog %s (%s): %w", key, dl.CallID, err)
		}
	}
	return nil
}

// WriteHTable is HTable.Write for callers that hold the node (evi's dmq:
// backend); it fails when the htable peer is not running.
func (n *Node) WriteHTable(ctx context.Context, w HTableWrite, quorum int) error {
	if n.htable == nil {
		return errors.New("dmq: the htable peer is not running: add \"htable\" to [dmq] peers")
	}
	return n.htable.Write(ctx, w, quorum)
}

// WriteUsrloc is Usrloc.Write through the node.
func (n *Node) WriteUsrloc(ctx context.Context, w ContactWrite, quorum int) error {
	if n.usrloc == nil {
		return errors.New("dmq: the usrloc peer is not running: add \"usrloc\" to [dmq] peers")
	}
	return n.usrloc.Write(ctx, w, quorum)
}

// WriteDialog is Dialogs.Write through the node.
func (n *Node) WriteDialog(ctx context.Context, w DialogWrite, quorum int) error {
	if n.dialog == nil {
		return errors.New("dmq: the dialog peer is not running: add \"dialog\" to [dmq] peers")
	}
	return n.dialog.Write(ctx, w, quorum)
}
