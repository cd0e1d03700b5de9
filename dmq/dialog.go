package dmq

import (
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fastjson"
)

// dialog dmq actions.
const (
	dlgNone = iota
	dlgUpdate
	dlgState
	dlgRm
	dlgSync
)

// Dialog states as the dialog module numbers them.
const (
	DialogUnconfirmed = 1
	DialogEarly       = 2
	DialogConfirmedNA = 3
	DialogConfirmed   = 4
	DialogDeleted     = 5
)

// Dialog is one dialog as the dialog module replicates it.
type Dialog struct {
	HEntry, HID uint32
	CallID      string
	FromURI     string
	ToURI       string
	ReqURI      string
	Tag1, Tag2  string
	State       int
	InitTS      time.Time
	StartTS     time.Time
	Lifetime    int
	Vars        map[string]string
}

// Key is h_entry:h_id, the dialog's identity on every node.
func (d Dialog) Key() string {
	return strconv.FormatUint(uint64(d.HEntry), 10) + ":" + strconv.FormatUint(uint64(d.HID), 10)
}

// Dialogs observes the dialog channel: dialogs with their state, from
// updates, state changes and removals. It answers sync requests with nothing.
//
// Kamailio sends a dialog's replication from whichever process handled the
// SIP message, so a node can get "confirmed" after "deleted" (observed: the
// dialog module itself logs "Ignoring backwards state change"). The view
// ignores backward state changes as the module does, and remembers deleted
// dialogs for a while so that a late message does not bring one back.
type Dialogs struct {
	node *Node
	now  func() time.Time

	mu      sync.RWMutex
	dialogs map[string]*Dialog
	gone    map[string]time.Time // deleted dialogs, until when a late message is ignored
}

// tombstoneTTL is how long a deleted dialog's late messages are ignored.
const tombstoneTTL = 5 * time.Minute

func newDialogs(n *Node) *Dialogs {
	return &Dialogs{node: n, now: time.Now, dialogs: make(map[string]*Dialog), gone: make(map[string]time.Time)}
}

// Channel implements Peer.
func (d *Dialogs) Channel() string { return ChannelDialog }

// SyncRequest implements Peer: {"action":4} makes a node broadcast all its
// dialogs.
func (d *Dialogs) SyncRequest() []byte { return []byte(`{"action":4}`) }

// Handle implements Peer: 400 for a body that is not a JSON object, 500 for a
// state change or removal of an unknown dialog (as the dialog module does).
func (d *Dialogs) Handle(r *Request) int {
	if len(r.Body) == 0 {
		return 400
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(r.Body)
	if err != nil || v.Type() != fastjson.TypeObject {
		d.node.rl.WarnKey("dialog_json "+r.Src.String(), "dmq: dialog body is not a JSON object", "from", r.From.String(), "err", err)
		return 400
	}
	action := v.GetInt("action")
	if action == dlgSync {
		return 200
	}
	key := strconv.FormatUint(v.GetUint64("h_entry"), 10) + ":" + strconv.FormatUint(v.GetUint64("h_id"), 10)
	raw := v.MarshalTo(nil)
	d.mu.Lock()
	dl := d.dialogs[key]
	_, deleted := d.gone[key]
	event := ""
	switch action {
	case dlgUpdate:
		if deleted {
			break
		}
		if dl == nil {
			dl = &Dialog{HEntry: uint32(v.GetUint64("h_entry")), HID: uint32(v.GetUint64("h_id"))}
			d.dialogs[key] = dl
		}
		if mergeDialog(dl, v) {
			event = "update"
		}
	case dlgState:
		if dl == nil {
			if deleted {
				break
			}
			d.mu.Unlock()
			return 500
		}
		if mergeDialog(dl, v) {
			event = "state"
		}
		if dl.State == DialogDeleted {
			delete(d.dialogs, key)
			d.gone[key] = d.now().Add(tombstoneTTL)
		}
	case dlgRm:
		if dl == nil {
			if deleted {
				break
			}
			d.mu.Unlock()
			return 500
		}
		delete(d.dialogs, key)
		d.gone[key] = d.now().Add(tombstoneTTL)
		event = "delete"
	default:
		d.mu.Unlock()
		return 400
	}
	var snap Dialog
	if dl != nil {
		snap = *dl
	}
	n := len(d.dialogs)
	d.mu.Unlock()
	d.node.metrics.dialogs.With().Set(float64(n))
	if event != "" {
		d.event(event, snap, r.From, raw)
	}
	return 200
}

// expire forgets tombstones of dialogs deleted long ago.
func (d *Dialogs) expire() {
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, until := range d.gone {
		if now.After(until) {
			delete(d.gone, k)
		}
	}
}

// mergeDialog applies a message's fields; false when it is a backward state
// change, which is ignored whole.
func mergeDialog(dl *Dialog, v *fastjson.Value) bool {
	if x := v.Get("state"); x != nil && x.GetInt() < dl.State {
		return false
	}
	str := func(k string, dst *string) {
		if x := v.Get(k); x != nil {
			*dst = string(x.GetStringBytes())
		}
	}
	str("callid", &dl.CallID)
	str("from_uri", &dl.FromURI)
	str("to_uri", &dl.ToURI)
	str("req_uri", &dl.ReqURI)
	str("tag1", &dl.Tag1)
	str("tag2", &dl.Tag2)
	if x := v.Get("state"); x != nil {
		dl.State = x.GetInt()
	}
	if x := v.Get("init_ts"); x != nil && x.GetInt64() > 0 {
		dl.InitTS = time.Unix(x.GetInt64(), 0)
	}
	if x := v.Get("start_ts"); x != nil && x.GetInt64() > 0 {
		dl.StartTS = time.Unix(x.GetInt64(), 0)
	}
	if x := v.Get("lifetime"); x != nil {
		dl.Lifetime = x.GetInt()
	}
	if vars := v.GetObject("vars"); vars != nil {
		if dl.Vars == nil {
			dl.Vars = make(map[string]string)
		}
		vars.Visit(func(k []byte, x *fastjson.Value) {
			dl.Vars[string(k)] = string(x.GetStringBytes())
		})
	}
	return true
}

// Len is the number of dialogs.
func (d *Dialogs) Len() int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return len(d.dialogs)
}

// Dump returns every dialog, ordered by key.
func (d *Dialogs) Dump() []Dialog {
	d.mu.RLock()
	out := make([]Dialog, 0, len(d.dialogs))
	for _, dl := range d.dialogs {
		out = append(out, *dl)
	}
	d.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

func (d *Dialogs) event(action string, dl Dialog, from NodeAddr, raw []byte) {
	if d.node.opts.OnChange == nil {
		return
	}
	d.node.emit("E_DMQ_DIALOG", jsonObject(
		"action", action, "h_entry", int64(dl.HEntry), "h_id", int64(dl.HID), "callid", dl.CallID,
		"state", dl.State, "node", from.String(), "body", raw))
}
