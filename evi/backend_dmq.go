package evi

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fastjson"

	"github.com/sipside/sipside/dmq"
)

func init() { backendSchemes["dmq"] = newDMQBackend }

// DMQ is the running DMQ node as dmq: backends write through it. The daemon
// sets Deps.DMQ from its dmq.Node; it is nil without [dmq] (and in `sipside
// check`, which builds backends only to validate them).
type DMQ interface {
	IsJoined() bool
	HasPeer(channel string) bool
	WriteHTable(ctx context.Context, w dmq.HTableWrite, quorum int) error
	WriteUsrloc(ctx context.Context, w dmq.ContactWrite, quorum int) error
	WriteDialog(ctx context.Context, w dmq.DialogWrite, quorum int) error
}

// ErrRejected marks an event a backend can never deliver as it is (a
// parameter its template needs is missing): retrying or spooling it would
// only block what comes after, so the router counts it as failed and
// moves on.
var ErrRejected = errors.New("event rejected")

// IsRejected reports whether err is a rejection. A virtual subscriber's
// error is one only when every member rejected the event: a member that
// merely failed may take it later, from the spool.
func IsRejected(err error) bool {
	var me *MemberError
	if errors.As(err, &me) {
		if len(me.Errs) == 0 {
			return false
		}
		for _, e := range me.Errs {
			if !IsRejected(e) {
				return false
			}
		}
		return true
	}
	return errors.Is(err, ErrRejected)
}

// DMQChannels lists the DMQ channels socket writes to (members of a
// virtual: socket included), for the config check: a dmq: socket needs
// [dmq] and the peer of its channel.
func DMQChannels(socket string) []string {
	socket = strings.TrimSpace(socket)
	if rest, ok := strings.CutPrefix(socket, "virtual:"); ok {
		var out []string
		for _, f := range strings.Fields(rest) {
			out = append(out, DMQChannels(f)...)
		}
		return out
	}
	rest, ok := strings.CutPrefix(socket, "dmq:")
	if !ok {
		return nil
	}
	kind, _, _ := strings.Cut(rest, "?")
	kind, _, _ = strings.Cut(kind, ":")
	return []string{kind}
}

// tmpl is a value template: literal text and {param} references, parsed
// once when the backend is built.
type tmpl struct {
	src   string
	parts []tmplPart
}

type tmplPart struct {
	lit  string
	path []string // {a.b} -> ["a","b"]; nil for a literal
}

func parseTmpl(s string) (tmpl, error) {
	t := tmpl{src: s}
	for s != "" {
		i := strings.IndexByte(s, '{')
		if i < 0 {
			t.parts = append(t.parts, tmplPart{lit: s})
			break
		}
		if i > 0 {
			t.parts = append(t.parts, tmplPart{lit: s[:i]})
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return tmpl{}, fmt.Errorf("%q: unclosed {", t.src)
		}
		name := s[i+1 : i+j]
		if name == "" || strings.ContainsAny(name, "{") {
			return tmpl{}, fmt.Errorf("%q: want {PARAM} or {PARAM.MEMBER}", t.src)
		}
		path := strings.Split(name, ".")
		for _, p := range path {
			if p == "" {
				return tmpl{}, fmt.Errorf("%q: empty name in {%s}", t.src, name)
			}
		}
		t.parts = append(t.parts, tmplPart{path: path})
		s = s[i+j+1:]
	}
	return t, nil
}

// missingParam is the error of an event without a parameter a template
// needs.
type missingParam struct{ name string }

func (e *missingParam) Error() string { return "no parameter " + strconv.Quote(e.name) }

// render fills the template from v (the event's params, nil when none). It
// also reports whether the whole value is one integer: a lone {param} that
// is a JSON integer, or literal digits. A string parameter stays a string
// even when it holds digits: that is what the proxy sent.
func (t tmpl) render(v *fastjson.Value) (s string, isInt bool, n int64, err error) {
	if len(t.parts) == 1 {
		p := t.parts[0]
		if p.path == nil {
			if n, err := strconv.ParseInt(p.lit, 10, 64); err == nil {
				return p.lit, true, n, nil
			}
			return p.lit, false, 0, nil
		}
		x, err := lookup(v, p.path)
		if err != nil {
			return "", false, 0, err
		}
		if x.Type() == fastjson.TypeNumber {
			if n, err := x.Int64(); err == nil {
				return strconv.FormatInt(n, 10), true, n, nil
			}
		}
		return valueText(x), false, 0, nil
	}
	var b strings.Builder
	for _, p := range t.parts {
		if p.path == nil {
			b.WriteString(p.lit)
			continue
		}
		x, err := lookup(v, p.path)
		if err != nil {
			return "", false, 0, err
		}
		b.WriteString(valueText(x))
	}
	return b.String(), false, 0, nil
}

func lookup(v *fastjson.Value, path []string) (*fastjson.Value, error) {
	x := v
	if x != nil {
		x = x.Get(path...)
	}
	if x == nil || x.Type() == fastjson.TypeNull {
		return nil, &missingParam{strings.Join(path, ".")}
	}
	return x, nil
}

// valueText is a parameter as text: strings unquoted, anything else as its
// JSON.
func valueText(x *fastjson.Value) string {
	if x.Type() == fastjson.TypeString {
		return string(x.GetStringBytes())
	}
	return string(x.MarshalTo(nil))
}

// dmqBackend writes each event into the DMQ bus through the htable,
// usrloc or dialog peer of the node.
type dmqBackend struct {
	kind   string // dmq.ChannelHTable, ChannelUsrloc, ChannelDialog
	table  string
	delete bool
	quorum int
	fields map[string]tmpl // the socket's template parameters
	expire time.Duration   // htable: a constant expire
	expT   *tmpl           // htable: expire from the event
	hash   uint32          // dialog: the dialog module's hash_size
	node   DMQ
	log    *rateLog
	pool   fastjson.ParserPool
}

// dmqFields are the template parameters each kind takes, the required ones
// first; op and quorum are taken by every kind.
var dmqFields = map[string]struct{ required, optional []string }{
	dmq.ChannelHTable: {[]string{"key"}, []string{"value", "expire"}},
	dmq.ChannelUsrloc: {[]string{"aor", "contact"}, []string{"expires", "ruid", "received", "path", "callid", "user_agent", "instance", "q", "cseq", "flags", "cflags", "methods"}},
	dmq.ChannelDialog: {[]string{"callid"}, []string{"from_uri", "to_uri", "req_uri", "from_tag", "to_tag", "state", "lifetime", "hash_size"}},
}

const dmqSyntax = `want dmq:htable:TABLE?key={param}&value={param}[&expire=SECONDS][&op=set|delete], ` +
	`dmq:usrloc?aor={param}&contact={param}[&expires=SECONDS][&op=insert|delete] or ` +
	`dmq:dialog?callid={param}&from_uri=…&to_uri=…&from_tag=…[&state=N][&op=update|delete] (see evi/README.md)`

func newDMQBackend(rest string, d Deps) (Backend, error) {
	head, query, _ := strings.Cut(rest, "?")
	kind, table, _ := strings.Cut(head, ":")
	spec, ok := dmqFields[kind]
	if !ok {
		return nil, fmt.Errorf("dmq: unknown kind %q: %s", kind, dmqSyntax)
	}
	b := &dmqBackend{kind: kind, table: table, fields: make(map[string]tmpl), log: newRateLog(d.Log, 10*time.Second)}
	if d.DMQ != nil {
		b.node = d.DMQ
	}
	if kind == dmq.ChannelHTable && table == "" {
		return nil, fmt.Errorf("dmq:htable: no table: %s", dmqSyntax)
	}
	if kind != dmq.ChannelHTable && table != "" {
		return nil, fmt.Errorf("dmq:%s takes no table (%q): %s", kind, table, dmqSyntax)
	}
	// Values are split by hand rather than with url.ParseQuery: a template
	// holds { and } and is written unescaped in the config.
	allowed := map[string]bool{"op": true, "quorum": true}
	for _, f := range append(append([]string{}, spec.required...), spec.optional...) {
		allowed[f] = true
	}
	seen := map[string]bool{}
	for _, kv := range strings.Split(query, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		// %XX escapes only: a + is a plus in a cell value, not a space.
		if uv, err := url.PathUnescape(v); err == nil {
			v = uv
		}
		if !allowed[k] {
			return nil, fmt.Errorf("dmq:%s: unknown parameter %q: %s", kind, k, dmqSyntax)
		}
		if seen[k] {
			return nil, fmt.Errorf("dmq:%s: parameter %q given twice", kind, k)
		}
		seen[k] = true
		switch k {
		case "op":
			switch {
			case v == "delete":
				b.delete = true
			case kind == dmq.ChannelHTable && v == "set",
				kind == dmq.ChannelUsrloc && v == "insert",
				kind == dmq.ChannelDialog && v == "update":
			default:
				return nil, fmt.Errorf("dmq:%s: op=%q: %s", kind, v, dmqSyntax)
			}
		case "quorum":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("dmq:%s: quorum=%q: want a number of nodes, 1 or more (default: every active node)", kind, v)
			}
			b.quorum = n
		case "hash_size":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || n == 0 || n&(n-1) != 0 {
				return nil, fmt.Errorf("dmq:dialog: hash_size=%q: want the dialog module's hash_size, a power of two (default 4096)", v)
			}
			b.hash = uint32(n)
		default:
			t, err := parseTmpl(v)
			if err != nil {
				return nil, fmt.Errorf("dmq:%s: %s: %w", kind, k, err)
			}
			b.fields[k] = t
		}
	}
	for _, f := range spec.required {
		if _, ok := b.fields[f]; !ok {
			return nil, fmt.Errorf("dmq:%s: no %s=: %s", kind, f, dmqSyntax)
		}
	}
	if kind == dmq.ChannelHTable {
		if _, ok := b.fields["value"]; !ok && !b.delete {
			return nil, fmt.Errorf("dmq:htable: a set needs value=: %s", dmqSyntax)
		}
		if t, ok := b.fields["expire"]; ok {
			if len(t.parts) == 1 && t.parts[0].path == nil {
				n, err := strconv.Atoi(t.src)
				if err != nil || n < 0 {
					return nil, fmt.Errorf("dmq:htable: expire=%q: want SECONDS or {param}", t.src)
				}
				b.expire = time.Duration(n) * time.Second
			} else {
				b.expT = &t
			}
		}
	}
	if kind == dmq.ChannelDialog {
		if t, ok := b.fields["state"]; ok && len(t.parts) == 1 && t.parts[0].path == nil {
			if _, err := dialogState(t.src); err != nil {
				return nil, fmt.Errorf("dmq:dialog: %w", err)
			}
		}
	}
	return b, nil
}

// Deliver renders the event into one write and waits for the bus to take
// it. It fails at once while the node has not joined, so that the route's
// spool or FAILOVER takes over instead of the event waiting out the
// route's timeout.
func (b *dmqBackend) Deliver(ctx context.Context, ev *Event) error {
	if b.node == nil {
		return errors.New("dmq: no DMQ node: configure [dmq] listen and seeds")
	}
	if !b.node.HasPeer(b.kind) {
		return fmt.Errorf("dmq: the %s peer is not running: add %q to [dmq] peers", b.kind, b.kind)
	}
	if !b.node.IsJoined() {
		return dmq.ErrNotJoined
	}
	var v *fastjson.Value
	p := b.pool.Get()
	defer b.pool.Put(p)
	if len(ev.Params) > 0 {
		var err error
		if v, err = p.ParseBytes(ev.Params); err != nil {
			return b.reject(ev, fmt.Errorf("params are not JSON: %w", err))
		}
	}
	var err error
	switch b.kind {
	case dmq.ChannelHTable:
		err = b.htable(ctx, ev, v)
	case dmq.ChannelUsrloc:
		err = b.usrloc(ctx, ev, v)
	default:
		err = b.dialog(ctx, ev, v)
	}
	return err
}

// reject logs (rate-limited) and wraps an error that retrying cannot fix.
func (b *dmqBackend) reject(ev *Event, err error) error {
	b.log.WarnKey(ev.Name, "dmq: event rejected: not written to the bus", "event", ev.Name, "kind", b.kind, "error", err)
	return fmt.Errorf("%w: %s: %w", ErrRejected, ev.Name, err)
}

func (b *dmqBackend) str(ev *Event, v *fastjson.Value, field string) (string, error) {
	t, ok := b.fields[field]
	if !ok {
		return "", nil
	}
	s, _, _, err := t.render(v)
	if err != nil {
		return "", b.reject(ev, fmt.Errorf("%s=%s: %w", field, t.src, err))
	}
	return s, nil
}

func (b *dmqBackend) num(ev *Event, v *fastjson.Value, field string, def int64) (int64, error) {
	t, ok := b.fields[field]
	if !ok {
		return def, nil
	}
	s, isInt, n, err := t.render(v)
	if err == nil && !isInt {
		// A number sent as a string ("3600") is still meant as one here.
		n, err = strconv.ParseInt(s, 10, 64)
		if err != nil {
			err = fmt.Errorf("%q is not an integer", s)
		}
	}
	if err != nil {
		return 0, b.reject(ev, fmt.Errorf("%s=%s: %w", field, t.src, err))
	}
	return n, nil
}

func nonEmpty(b *dmqBackend, ev *Event, field, s string) error {
	if s == "" {
		return b.reject(ev, fmt.Errorf("%s=%s is empty", field, b.fields[field].src))
	}
	return nil
}

func (b *dmqBackend) htable(ctx context.Context, ev *Event, v *fastjson.Value) error {
	key, err := b.str(ev, v, "key")
	if err != nil {
		return err
	}
	if err := nonEmpty(b, ev, "key", key); err != nil {
		return err
	}
	w := dmq.HTableWrite{Table: b.table, Name: key, Delete: b.delete, Expire: b.expire}
	if !b.delete {
		s, isInt, n, err := b.fields["value"].render(v)
		if err != nil {
			return b.reject(ev, fmt.Errorf("value=%s: %w", b.fields["value"].src, err))
		}
		if isInt {
			w.Type, w.Int = dmq.TypeInt, n
		} else {
			w.Type, w.Str = dmq.TypeStr, s
		}
		if b.expT != nil {
			secs, err := b.num(ev, v, "expire", 0)
			if err != nil {
				return err
			}
			w.Expire = time.Duration(max(secs, 0)) * time.Second
		}
	}
	return b.node.WriteHTable(ctx, w, b.quorum)
}

func (b *dmqBackend) usrloc(ctx context.Context, ev *Event, v *fastjson.Value) error {
	var c dmq.Contact
	var err error
	for _, f := range []struct {
		name string
		dst  *string
	}{{"aor", &c.AoR}, {"contact", &c.Contact}, {"ruid", &c.RUID}, {"received", &c.Received}, {"path", &c.Path},
		{"callid", &c.CallID}, {"user_agent", &c.UserAgent}, {"instance", &c.Instance}} {
		if *f.dst, err = b.str(ev, v, f.name); err != nil {
			return err
		}
	}
	if err := nonEmpty(b, ev, "aor", c.AoR); err != nil {
		return err
	}
	if err := nonEmpty(b, ev, "contact", c.Contact); err != nil {
		return err
	}
	expires, err := b.num(ev, v, "expires", 3600)
	if err != nil {
		return err
	}
	if expires < 0 {
		return b.reject(ev, fmt.Errorf("expires=%s is %d: want seconds from now, 0 for a permanent contact", b.fields["expires"].src, expires))
	}
	if expires > 0 {
		c.Expires = time.Now().Add(time.Duration(expires) * time.Second)
	}
	q, err := b.num(ev, v, "q", -1)
	if err != nil {
		return err
	}
	cseq, err := b.num(ev, v, "cseq", 1)
	if err != nil {
		return err
	}
	flags, err := b.num(ev, v, "flags", 0)
	if err != nil {
		return err
	}
	cflags, err := b.num(ev, v, "cflags", 0)
	if err != nil {
		return err
	}
	methods, err := b.num(ev, v, "methods", 0xffffffff)
	if err != nil {
		return err
	}
	c.Q, c.CSeq, c.Flags, c.CFlags, c.Methods = int(q), int(cseq), int(flags), int(cflags), uint32(methods)
	return b.node.WriteUsrloc(ctx, dmq.ContactWrite{Contact: c, Delete: b.delete}, b.quorum)
}

// dialogState reads a dialog state by number (1-5) or by the dialog
// module's name for it.
func dialogState(s string) (int, error) {
	switch strings.ToLower(s) {
	case "1", "unconfirmed":
		return dmq.DialogUnconfirmed, nil
	case "2", "early":
		return dmq.DialogEarly, nil
	case "3", "confirmed_na":
		return dmq.DialogConfirmedNA, nil
	case "4", "confirmed":
		return dmq.DialogConfirmed, nil
	case "5", "deleted":
		return dmq.DialogDeleted, nil
	}
	return 0, fmt.Errorf("state %q: want 1-5 or unconfirmed, early, confirmed_na, confirmed, deleted", s)
}

func (b *dmqBackend) dialog(ctx context.Context, ev *Event, v *fastjson.Value) error {
	var d dmq.Dialog
	var err error
	for _, f := range []struct {
		name string
		dst  *string
	}{{"callid", &d.CallID}, {"from_uri", &d.FromURI}, {"to_uri", &d.ToURI}, {"req_uri", &d.ReqURI},
		{"from_tag", &d.Tag1}, {"to_tag", &d.Tag2}} {
		if *f.dst, err = b.str(ev, v, f.name); err != nil {
			return err
		}
	}
	if err := nonEmpty(b, ev, "callid", d.CallID); err != nil {
		return err
	}
	if d.ReqURI == "" {
		d.ReqURI = d.ToURI
	}
	d.State = dmq.DialogConfirmed
	if _, ok := b.fields["state"]; ok {
		s, err := b.str(ev, v, "state")
		if err != nil {
			return err
		}
		if d.State, err = dialogState(s); err != nil {
			return b.reject(ev, err)
		}
	}
	lifetime, err := b.num(ev, v, "lifetime", 3600)
	if err != nil {
		return err
	}
	d.Lifetime = int(lifetime)
	d.HEntry, d.HID = dmq.DialogID(d.CallID, d.Tag1, b.hash)
	return b.node.WriteDialog(ctx, dmq.DialogWrite{Dialog: d, Delete: b.delete}, b.quorum)
}

func (b *dmqBackend) Close() error { return nil }
