package dmq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fastjson"
)

// htable actions (ht_dmq.h).
const (
	htNone = iota
	htSync
	htSetCell
	htSetCellExpire
	htDelCell
	htRmCellRe
	htRmCellSw
)

// Cell value types, as Kamailio numbers them (AVP_VAL_STR = 2).
const (
	TypeInt = 0
	TypeStr = 2
)

// syncChunk is where Kamailio cuts a sync answer into another message.
const syncChunk = 60000

// Cell is one htable item.
type Cell struct {
	Table  string
	Name   string
	Type   int // TypeInt or TypeStr
	Int    int64
	Str    string
	Expire time.Time // zero: no expiry
}

// Value is the cell's value as text.
func (c Cell) Value() string {
	if c.Type&TypeStr != 0 {
		return c.Str
	}
	return strconv.FormatInt(c.Int, 10)
}

type cellVal struct {
	str    bool
	n      int64
	s      string
	expire int64 // unix seconds, 0 none
	// own: this node wrote the value (HTable.Write). The same value coming
	// back from the bus (a sync answer, a node replaying it) is an echo and
	// raises no event unless [dmq] echo is on.
	own bool
}

// HTable mirrors the tables Kamailio replicates with dmqreplicate=1, and
// writes back: Set and Delete are broadcast to every active node.
//
// Two Kamailio details are kept on purpose: a set clears any expiry (what
// ht_set_cell does in a table with autoexpire=0, the common replicated case),
// and a set-expire for a missing cell is a no-op. Unlike Kamailio in an
// autoexpire=0 table, the mirror does honour set-expire, because what the
// sender meant is plain.
type HTable struct {
	node     *Node
	allowed  map[string]bool // nil: every table
	now      func() time.Time
	maxCells int // per table

	mu     sync.RWMutex
	tables map[string]map[string]*cellVal
	count  int
	asked  map[NodeAddr]time.Time // when each node was last asked for a sync
}

// syncAnswerWindow is how long after asking a node its sync answers are
// taken: Kamailio sends every chunk at once, but a table of a million cells
// is a few hundred datagrams through a busy tm.
const syncAnswerWindow = time.Minute

func newHTable(n *Node, tables []string, maxCells int) *HTable {
	h := &HTable{node: n, now: time.Now, tables: make(map[string]map[string]*cellVal),
		maxCells: maxCells, asked: make(map[NodeAddr]time.Time)}
	if len(tables) > 0 {
		h.allowed = make(map[string]bool)
		for _, t := range tables {
			h.allowed[t] = true
		}
	}
	return h
}

// Channel implements Peer.
func (h *HTable) Channel() string { return ChannelHTable }

// SyncRequest implements Peer: {"action":1} asks for every replicated table.
func (h *HTable) SyncRequest() []byte { return []byte(`{"action":1}`) }

// markAsked records that a was asked for a sync, so that its answers are
// taken for syncAnswerWindow.
func (h *HTable) markAsked(a NodeAddr) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	for k, at := range h.asked {
		if now.Sub(at) > syncAnswerWindow {
			delete(h.asked, k)
		}
	}
	h.asked[a] = now
}

func (h *HTable) wasAsked(a NodeAddr) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	at, ok := h.asked[a]
	return ok && h.now().Sub(at) <= syncAnswerWindow
}

// htMsg is one parsed htable action body.
type htMsg struct {
	action, typ, mode int
	htname, cname     string
	strval            string
	intval            int64
	hasCname, hasStr  bool
	hasInt            bool
}

var errHTBody = errors.New("bad htable body")

// parseHTAction parses an action body with ht_dmq_handle_msg's rules: every
// member must be a known one, else the body is refused.
func parseHTAction(o *fastjson.Object) (htMsg, error) {
	var m htMsg
	var err error
	o.Visit(func(k []byte, v *fastjson.Value) {
		if err != nil {
			return
		}
		key := string(k)
		switch key {
		case "action", "type", "mode":
			n, e := v.Int()
			if e != nil {
				err = fmt.Errorf("%w: %s is not an integer", errHTBody, key)
				return
			}
			switch key {
			case "action":
				m.action = n
			case "type":
				m.typ = n
			default:
				m.mode = n
			}
		case "intval":
			n, e := v.Int64()
			if e != nil {
				err = fmt.Errorf("%w: intval is not an integer", errHTBody)
				return
			}
			m.intval, m.hasInt = n, true
		case "htname", "cname", "strval":
			b, e := v.StringBytes()
			if e != nil {
				err = fmt.Errorf("%w: %s is not a string", errHTBody, key)
				return
			}
			switch key {
			case "htname":
				m.htname = string(b)
			case "cname":
				m.cname, m.hasCname = string(b), true
			default:
				m.strval, m.hasStr = string(b), true
			}
		default:
			err = fmt.Errorf("%w: unknown member %q", errHTBody, truncate(key, 40))
		}
	})
	return m, err
}

// Handle implements Peer with ht_dmq_handle_msg's answers: 400 for a body
// that is not a JSON object of known members, 500 for an unknown table or a
// failed action, 200 otherwise.
func (h *HTable) Handle(r *Request) int {
	if len(r.Body) == 0 {
		return 400
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(r.Body)
	if err != nil {
		h.node.rl.WarnKey("htable_json "+r.Src.String(), "dmq: htable body is not JSON", "from", r.From.String(), "err", err)
		return 400
	}
	o, err := v.Object()
	if err != nil || o.Len() == 0 {
		h.node.rl.WarnKey("htable_object "+r.Src.String(), "dmq: htable body is not a JSON object with members", "from", r.From.String())
		return 400
	}
	first := ""
	o.Visit(func(k []byte, _ *fastjson.Value) {
		if first == "" {
			first = string(k)
		}
	})
	if first == "cells" {
		if !h.wasAsked(r.From) {
			// Kamailio broadcasts a sync answer when the asking node is
			// unknown to it; such cells, and anyone else's, are not ours.
			h.node.refuse("unsolicited_sync", r.Src, "dmq: htable sync answer this node did not ask for; refused", "from", r.From.String())
			return 403
		}
		h.applySync(r, o.Get("cells"))
		return 200
	}
	m, err := parseHTAction(o)
	if err != nil {
		h.node.rl.WarnKey("htable_body "+r.Src.String(), "dmq: htable body refused", "from", r.From.String(), "err", err)
		return 400
	}
	if m.action == htSync {
		if r.Known {
			from := r.From
			h.node.Go(func(ctx context.Context) { h.sendSync(ctx, from, m.htname) })
		} else {
			h.node.rl.InfoKey("htable_sync "+r.Src.String(), "dmq: htable sync asked by a node not in the list; not answering", "from", r.From.String())
		}
		return 200
	}
	return h.apply(m, r.From)
}

func (h *HTable) tableAllowed(t string) bool {
	return t != "" && (h.allowed == nil || h.allowed[t])
}

// apply replays one action (ht_dmq_replay_action).
func (h *HTable) apply(m htMsg, from NodeAddr) int {
	if !h.tableAllowed(m.htname) {
		h.node.rl.WarnKey("htable_table "+from.String(), "dmq: htable action for a table not mirrored", "table", m.htname, "from", from.String())
		return 500
	}
	switch m.action {
	case htSetCell:
		if !m.hasCname || (m.typ&TypeStr != 0 && !m.hasStr) || (m.typ&TypeStr == 0 && !m.hasInt) {
			return 400
		}
		c := Cell{Table: m.htname, Name: m.cname, Type: m.typ & TypeStr, Int: m.intval, Str: m.strval}
		echo := h.isEcho(c)
		if !h.store(c, echo) {
			h.refuseFull(c.Table, 1, from)
			return 500
		}
		if !echo {
			h.event("set", c, from)
		}
	case htSetCellExpire:
		if !m.hasCname || !m.hasInt {
			return 400
		}
		c, ok := h.setExpire(m.htname, m.cname, m.intval)
		if ok {
			h.event("set_expire", c, from)
		}
	case htDelCell:
		if !m.hasCname {
			return 400
		}
		if c, ok := h.remove(m.htname, m.cname); ok {
			h.event("delete", c, from)
		}
	case htRmCellRe, htRmCellSw:
		if !m.hasStr {
			return 400
		}
		var match func(string) bool
		if m.action == htRmCellRe {
			re, err := regexp.Compile(m.strval)
			if err != nil {
				return 500
			}
			match = re.MatchString
		} else {
			match = func(s string) bool { return strings.HasPrefix(s, m.strval) }
		}
		for _, c := range h.removeMatching(m.htname, m.mode == 1, match) {
			h.event("delete", c, from)
		}
	default:
		return 500
	}
	return 200
}

// applySync stores the cells of a sync answer. Unknown members are ignored
// and an expire in the past means none, as ht_dmq_handle_sync does
// (ht_set_cell_ex with a non-positive relative expiry).
func (h *HTable) applySync(r *Request, cells *fastjson.Value) {
	arr, err := cells.Array()
	if err != nil {
		h.node.rl.WarnKey("htable_cells "+r.Src.String(), "dmq: htable sync answer without a cells array", "from", r.From.String())
		return
	}
	now := h.now().Unix()
	full := map[string]int{}
	defer func() {
		for table, n := range full {
			h.refuseFull(table, n, r.From)
		}
	}()
	for _, cv := range arr {
		o, err := cv.Object()
		if err != nil {
			continue
		}
		c := Cell{Table: string(o.Get("htname").GetStringBytes()), Name: string(o.Get("cname").GetStringBytes())}
		if c.Table == "" || c.Name == "" || !h.tableAllowed(c.Table) {
			continue
		}
		c.Type = o.Get("type").GetInt() & TypeStr
		if c.Type == TypeStr {
			c.Str = string(o.Get("strval").GetStringBytes())
		} else {
			c.Int = o.Get("intval").GetInt64()
		}
		if exp := o.Get("expire").GetInt64(); exp > now {
			c.Expire = time.Unix(exp, 0)
		}
		echo := h.isEcho(c)
		if !h.store(c, echo) {
			full[c.Table]++
			continue
		}
		if !echo {
			h.event("sync", c, r.From)
		}
	}
}

// isEcho reports whether c is a value this node wrote coming back, and
// echoes are not to become events.
func (h *HTable) isEcho(c Cell) bool {
	if h.node.cfg.Echo {
		return false
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	v := h.tables[c.Table][c.Name]
	return v != nil && v.own && v.str == (c.Type == TypeStr) && v.n == c.Int && v.s == c.Str
}

// storeOwn stores a cell this node writes.
func (h *HTable) storeOwn(c Cell) bool { return h.store(c, true) }

// store puts a cell in the mirror; false when that would take its table
// past max_cells (a cell already mirrored is always updated).
func (h *HTable) store(c Cell, own bool) bool {
	v := &cellVal{str: c.Type == TypeStr, n: c.Int, s: c.Str, own: own}
	if !c.Expire.IsZero() {
		v.expire = c.Expire.Unix()
	}
	h.mu.Lock()
	t := h.tables[c.Table]
	if _, ok := t[c.Name]; !ok {
		if h.maxCells > 0 && len(t) >= h.maxCells {
			h.mu.Unlock()
			return false
		}
		h.count++
	}
	if t == nil {
		t = make(map[string]*cellVal)
		h.tables[c.Table] = t
	}
	t[c.Name] = v
	h.mu.Unlock()
	h.node.metrics.cells.With().Set(float64(h.Len()))
	return true
}

// refuseFull counts n cells of table refused by max_cells.
func (h *HTable) refuseFull(table string, n int, from NodeAddr) {
	h.node.refuseN("max_cells", n, netip.AddrPort{}, "dmq: htable mirror full (dmq.max_cells); new cells refused",
		"table", table, "refused", n, "max_cells", h.maxCells, "from", from.String())
}

func (h *HTable) setExpire(table, name string, secs int64) (Cell, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v := h.tables[table][name]
	if v == nil {
		return Cell{}, false
	}
	if secs > 0 {
		v.expire = h.now().Unix() + secs
	} else {
		v.expire = 0
	}
	return toCell(table, name, v), true
}

func (h *HTable) remove(table, name string) (Cell, bool) {
	h.mu.Lock()
	v := h.tables[table][name]
	if v != nil {
		delete(h.tables[table], name)
		h.count--
	}
	h.mu.Unlock()
	if v == nil {
		return Cell{}, false
	}
	h.node.metrics.cells.With().Set(float64(h.Len()))
	return toCell(table, name, v), true
}

func (h *HTable) removeMatching(table string, byValue bool, match func(string) bool) []Cell {
	h.mu.Lock()
	var out []Cell
	for name, v := range h.tables[table] {
		subject := name
		if byValue {
			if !v.str {
				continue
			}
			subject = v.s
		}
		if match(subject) {
			out = append(out, toCell(table, name, v))
			delete(h.tables[table], name)
			h.count--
		}
	}
	h.mu.Unlock()
	h.node.metrics.cells.With().Set(float64(h.Len()))
	return out
}

// expire drops cells whose time has come, each as an "expired" event.
func (h *HTable) expire() {
	now := h.now().Unix()
	var gone []Cell
	h.mu.Lock()
	for table, t := range h.tables {
		for name, v := range t {
			if v.expire != 0 && v.expire <= now {
				gone = append(gone, toCell(table, name, v))
				delete(t, name)
				h.count--
			}
		}
	}
	h.mu.Unlock()
	if len(gone) == 0 {
		return
	}
	h.node.metrics.cells.With().Set(float64(h.Len()))
	for _, c := range gone {
		h.event("expired", c, h.node.self)
	}
}

func toCell(table, name string, v *cellVal) Cell {
	c := Cell{Table: table, Name: name, Int: v.n, Str: v.s}
	if v.str {
		c.Type = TypeStr
	}
	if v.expire != 0 {
		c.Expire = time.Unix(v.expire, 0)
	}
	return c
}

// Len is the number of cells mirrored.
func (h *HTable) Len() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.count
}

// Get returns a cell unless it is absent or expired.
func (h *HTable) Get(table, name string) (Cell, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	v := h.tables[table][name]
	if v == nil || (v.expire != 0 && v.expire <= h.now().Unix()) {
		return Cell{}, false
	}
	return toCell(table, name, v), true
}

// Dump returns the cells of one table (every table when table is ""),
// sorted by table and name.
func (h *HTable) Dump(table string) []Cell {
	h.mu.RLock()
	var out []Cell
	now := h.now().Unix()
	for tn, t := range h.tables {
		if table != "" && tn != table {
			continue
		}
		for name, v := range t {
			if v.expire == 0 || v.expire > now {
				out = append(out, toCell(tn, name, v))
			}
		}
	}
	h.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Table != out[j].Table {
			return out[i].Table < out[j].Table
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Set stores a string value here and on every active node; expire > 0 adds a
// set-expire, as htable.setxs does. The error names the nodes that refused or
// did not answer (a Kamailio node without the table answers 500).
func (h *HTable) Set(ctx context.Context, table, name, value string, expire time.Duration) error {
	return h.set(ctx, Cell{Table: table, Name: name, Type: TypeStr, Str: value}, expire)
}

// SetInt stores an integer value here and on every active node.
func (h *HTable) SetInt(ctx context.Context, table, name string, value int64, expire time.Duration) error {
	return h.set(ctx, Cell{Table: table, Name: name, Type: TypeInt, Int: value}, expire)
}

func (h *HTable) set(ctx context.Context, c Cell, expire time.Duration) error {
	if c.Table == "" || c.Name == "" {
		return errors.New("htable set: table and name must not be empty")
	}
	if !h.store(c, false) {
		return fmt.Errorf("htable set %s=>%s: the mirror of %s holds dmq.max_cells (%d) cells; raise max_cells or delete some", c.Table, c.Name, c.Table, h.maxCells)
	}
	h.event("set", c, h.node.self)
	if err := h.node.Broadcast(ctx, ChannelHTable, "application/json", htActionBody(htSetCell, c, 1)); err != nil {
		return fmt.Errorf("htable set %s=>%s: %w", c.Table, c.Name, err)
	}
	if expire > 0 {
		secs := int64((expire + time.Second - 1) / time.Second)
		if c, ok := h.setExpire(c.Table, c.Name, secs); ok {
			h.event("set_expire", c, h.node.self)
		}
		body := htActionBody(htSetCellExpire, Cell{Table: c.Table, Name: c.Name, Type: TypeInt, Int: secs}, 0)
		if err := h.node.Broadcast(ctx, ChannelHTable, "application/json", body); err != nil {
			return fmt.Errorf("htable set expire %s=>%s: %w", c.Table, c.Name, err)
		}
	}
	return nil
}

// Delete removes a cell here and on every active node.
func (h *HTable) Delete(ctx context.Context, table, name string) error {
	if c, ok := h.remove(table, name); ok {
		h.event("delete", c, h.node.self)
	}
	body := jsonObject("action", htDelCell, "htname", table, "cname", name, "mode", 0)
	if err := h.node.Broadcast(ctx, ChannelHTable, "application/json", body); err != nil {
		return fmt.Errorf("htable delete %s=>%s: %w", table, name, err)
	}
	return nil
}

// htActionBody builds the body ht_dmq_replicate_action builds, member order
// included.
func htActionBody(action int, c Cell, mode int) []byte {
	kv := []any{"action", action, "htname", c.Table, "cname", c.Name, "type", c.Type}
	if c.Type&TypeStr != 0 {
		kv = append(kv, "strval", c.Str)
	} else {
		kv = append(kv, "intval", c.Int)
	}
	return jsonObject(append(kv, "mode", mode)...)
}

// sendSync answers a sync request to the asking node, in chunks of about
// 60000 bytes as Kamailio does.
func (h *HTable) sendSync(ctx context.Context, to NodeAddr, table string) {
	cells := h.Dump(table)
	var buf bytes.Buffer
	count := 0
	flush := func() {
		body := append([]byte(`{"cells":[`), buf.Bytes()...)
		body = append(body, "]}"...)
		if _, err := h.node.Send(ctx, to, ChannelHTable, "application/json", body, 1); err != nil && ctx.Err() == nil {
			h.node.rl.WarnKey("sync_answer "+to.String(), "dmq: htable sync answer failed", "to", to.String(), "err", err)
		}
		buf.Reset()
		count = 0
	}
	for _, c := range cells {
		var exp int64
		if !c.Expire.IsZero() {
			exp = c.Expire.Unix()
		}
		kv := []any{"htname", c.Table, "cname", c.Name, "type", c.Type}
		if c.Type == TypeStr {
			kv = append(kv, "strval", c.Str)
		} else {
			kv = append(kv, "intval", c.Int)
		}
		item := jsonObject(append(kv, "expire", exp)...)
		if count > 0 && buf.Len()+len(item)+1 > syncChunk {
			flush()
		}
		if count > 0 {
			buf.WriteByte(',')
		}
		buf.Write(item)
		count++
	}
	flush()
}

func (h *HTable) event(action string, c Cell, from NodeAddr) {
	if h.node.opts.OnChange == nil {
		return
	}
	var exp int64
	if !c.Expire.IsZero() {
		exp = c.Expire.Unix()
	}
	kv := []any{"action", action, "htname", c.Table, "cname", c.Name, "type", c.Type}
	if c.Type == TypeStr {
		kv = append(kv, "strval", c.Str)
	} else {
		kv = append(kv, "intval", c.Int)
	}
	kv = append(kv, "expire", exp, "node", from.String())
	h.node.emit("E_DMQ_HTABLE", jsonObject(kv...))
}
