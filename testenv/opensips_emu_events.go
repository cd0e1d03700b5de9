package testenv

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fastjson"
)

// The emulator's events: subscriptions, raise_event and delivery to
// event_datagram, event_stream and event_virtual sockets.

// parseSocket parses an event socket string as the transport modules do.
func parseSocket(s string) (*osipsSub, bool) {
	proto, rest, ok := strings.Cut(s, ":")
	if !ok {
		return nil, false
	}
	sub := &osipsSub{proto: proto, rest: rest, socket: s}
	switch proto {
	case "udp", "tcp":
		addr := rest
		if proto == "tcp" {
			addr, sub.method, _ = strings.Cut(rest, "/")
		}
		host, port, ok := strings.Cut(addr, ":")
		n, err := strconv.Atoi(port)
		if !ok || host == "" || err != nil || n <= 0 || n > 65535 {
			return nil, false
		}
		sub.host, sub.port = host, n
	case "unix", "flatstore":
		if rest == "" {
			return nil, false
		}
	case "xmlrpc":
		if strings.Count(rest, ":") < 2 {
			return nil, false
		}
	case "virtual":
		f := strings.Fields(rest)
		if len(f) == 0 || (f[0] != "PARALLEL" && f[0] != "FAILOVER" && f[0] != "ROUND-ROBIN") {
			return nil, false
		}
		sub.rest = strings.Join(f, " ")
		sub.socket = "virtual:" + sub.rest
	default:
		return nil, false
	}
	return sub, true
}

// matches is the transports' match(): event_datagram compares a prefix of the address
// (a 3.6.8 bug, kept on purpose), event_stream never matches a socket with a /method
// (another 3.6.8 bug: re-subscribing adds a duplicate), the rest compare the text.
func (s *osipsSub) matches(n *osipsSub) bool {
	if s.proto != n.proto {
		return false
	}
	switch s.proto {
	case "udp":
		return s.port == n.port && strings.HasPrefix(s.host, n.host)
	case "unix":
		return strings.HasPrefix(s.rest, n.rest)
	case "tcp":
		return n.method == "" && s.method == "" && s.host == n.host && s.port == n.port
	}
	return s.rest == n.rest
}

// expired is checked lazily, at raise or listing time, with whole seconds.
func (s *osipsSub) expired(now int64) bool { return s.since+int64(s.expire) < now }

func (e *osipsEmu) purge(id int, now int64) {
	var live []*osipsSub
	for _, s := range e.subs[id] {
		if !s.expired(now) {
			live = append(live, s)
		}
	}
	e.subs[id] = live
}

var errBadParam = &osipsErr{400, "Bad parameter value", ""}

func (e *osipsEmu) subscribe(args osipsArgs) ([]byte, *osipsErr) {
	name, merr := stringParam(args["event"], "event")
	if merr != nil {
		return nil, merr
	}
	sock, merr := stringParam(args["socket"], "socket")
	if merr != nil {
		return nil, merr
	}
	expire := 3600
	if v, ok := args["expire"]; ok {
		if expire, merr = intParam(v, "expire"); merr != nil {
			return nil, merr
		}
		if expire < 0 {
			return nil, &osipsErr{-32602, "Invalid params", "Negative expire value"}
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	id := e.eventID(name)
	if id < 0 {
		return nil, errBadParam
	}
	sub, ok := parseSocket(sock)
	if !ok {
		return nil, errBadParam
	}
	now := time.Now().Unix()
	for _, s := range e.subs[id] {
		if s.matches(sub) {
			s.since, s.expire = now, expire
			return []byte(`"OK"`), nil
		}
	}
	sub.since, sub.expire = now, expire
	e.subs[id] = append([]*osipsSub{sub}, e.subs[id]...)
	return []byte(`"OK"`), nil
}

func appendSub(b []byte, s *osipsSub, now int64) []byte {
	b = append(b, `{"socket":`...)
	b = appendCJSONString(b, s.socket)
	b = fmt.Appendf(b, `,"expire":%d`, s.expire)
	if ttl := s.since + int64(s.expire) - now; ttl > 0 {
		return fmt.Appendf(b, `,"ttl":%d}`, ttl)
	}
	return append(b, `,"ttl":"expired"}`...)
}

func appendSubs(b []byte, subs []*osipsSub, now int64) []byte {
	b = append(b, '[')
	for i, s := range subs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendSub(b, s, now)
	}
	return append(b, ']')
}

func (e *osipsEmu) subscribersList(args osipsArgs) ([]byte, *osipsErr) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now().Unix()
	ev, ok := args["event"]
	if !ok {
		b := []byte(`{"Events":[`)
		first := true
		for id, name := range e.events {
			e.purge(id, now)
			if len(e.subs[id]) == 0 {
				continue
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = fmt.Appendf(b, `{"name":"%s","id":%d,"Subscribers":`, name, id)
			b = appendSubs(b, e.subs[id], now)
			b = append(b, '}')
		}
		return append(b, "]}"...), nil
	}
	name, merr := stringParam(ev, "event")
	if merr != nil {
		return nil, merr
	}
	id := e.eventID(name)
	if id < 0 {
		return nil, &osipsErr{404, "Event not published", ""}
	}
	e.purge(id, now)
	if sv, ok := args["socket"]; ok {
		sock, merr := stringParam(sv, "socket")
		if merr != nil {
			return nil, merr
		}
		if want, ok := parseSocket(sock); ok {
			for _, s := range e.subs[id] {
				if s.matches(want) {
					b := fmt.Appendf(nil, `{"Event":{"name":"%s","id":%d,"Subscriber":`, name, id)
					b = appendSub(b, s, now)
					return append(b, "}}"...), nil
				}
			}
		}
		return nil, &osipsErr{404, "Subscriber does not exist", ""}
	}
	if len(e.subs[id]) == 0 {
		return []byte(`{"Event":{}}`), nil
	}
	b := fmt.Appendf(nil, `{"Event":{"name":"%s","id":%d,"Subscribers":`, name, id)
	b = appendSubs(b, e.subs[id], now)
	return append(b, "}}"...), nil
}

// miRaise is MI raise_event: array items are stringified; named params come as a
// string holding a JSON object, whose numbers stay numbers and whose other non-string
// values become their JSON text.
func (e *osipsEmu) miRaise(args osipsArgs) ([]byte, *osipsErr) {
	name, merr := stringParam(args["event"], "event")
	if merr != nil {
		return nil, merr
	}
	var payload []byte
	named := false
	if pv, ok := args["params"]; ok {
		switch pv.Type() {
		case fastjson.TypeArray:
			items := pv.GetArray()
			if len(items) > 0 {
				payload = []byte{'['}
				for i, it := range items {
					s, merr := stringParam(it, "params")
					if merr != nil {
						return nil, &osipsErr{-32602, "Invalid params", "Bad type for array item in parameter 'params'"}
					}
					if i > 0 {
						payload = append(payload, ',')
					}
					payload = appendCJSONString(payload, s)
				}
				payload = append(payload, ']')
			}
		case fastjson.TypeString, fastjson.TypeNumber:
			s, _ := stringParam(pv, "params")
			var p fastjson.Parser
			ov, err := p.Parse(s)
			if err != nil || ov.Type() != fastjson.TypeObject {
				return nil, &osipsErr{400, "Bad Params", ""}
			}
			named = true
			payload = []byte{'{'}
			first := true
			ov.GetObject().Visit(func(k []byte, mv *fastjson.Value) {
				if !first {
					payload = append(payload, ',')
				}
				first = false
				payload = appendCJSONString(payload, string(k))
				payload = append(payload, ':')
				switch mv.Type() {
				case fastjson.TypeNumber:
					payload = strconv.AppendInt(payload, int64(valueint(mv.GetFloat64())), 10)
				case fastjson.TypeString:
					payload = appendCJSONString(payload, string(mv.GetStringBytes()))
				default:
					payload = appendCJSONString(payload, string(cjsonPrint(nil, mv, false, 0)))
				}
			})
			payload = append(payload, '}')
		default:
			return nil, &osipsErr{400, "No Params", ""}
		}
	}
	e.mu.Lock()
	id := e.eventID(name)
	if id < 0 {
		e.mu.Unlock()
		return nil, &osipsErr{404, "Event not registered", ""}
	}
	e.purge(id, time.Now().Unix())
	if len(e.subs[id]) == 0 {
		e.mu.Unlock()
		return nil, &osipsErr{480, "Temporarily Unavailable", ""}
	}
	if e.cfg.ArrayParamsBug && e.lastNamed && len(payload) > 0 && payload[0] == '[' {
		payload = arrayAsEmptyKeys(payload)
	}
	e.lastNamed = named
	e.mu.Unlock()
	// OpenSIPS answers "OK" at once and has another process send the event.
	select {
	case e.raises <- func() { _ = e.raise(name, payload, true) }:
	default:
		return nil, &osipsErr{500, "Cannot Raise Event", ""}
	}
	return []byte(`"OK"`), nil
}

// arrayAsEmptyKeys turns ["a","b"] into {"":"a","":"b"}.
func arrayAsEmptyKeys(arr []byte) []byte {
	var p fastjson.Parser
	v, err := p.ParseBytes(arr)
	if err != nil {
		return arr
	}
	b := []byte{'{'}
	for i, it := range v.GetArray() {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `"":`...)
		b = cjsonPrint(b, it, false, 0)
	}
	return append(b, '}')
}

// raise sends the event to every live subscriber, newest first.
func (e *osipsEmu) raise(name string, params []byte, fromMI bool) error {
	if len(params) > 0 && !fromMI {
		var p fastjson.Parser
		v, err := p.ParseBytes(params)
		if err != nil || (v.Type() != fastjson.TypeObject && v.Type() != fastjson.TypeArray) {
			return fmt.Errorf("opensips emulator: params of %s must be a JSON object or array, got %q", name, params)
		}
		params = cjsonPrint(nil, v, false, 0)
	}
	e.mu.Lock()
	id := e.eventID(name)
	if id < 0 {
		e.mu.Unlock()
		return fmt.Errorf("opensips emulator: event %s is not published (add it to OpenSIPSConfig.Events)", name)
	}
	e.purge(id, time.Now().Unix())
	subs := append([]*osipsSub(nil), e.subs[id]...)
	e.mu.Unlock()
	var errs []error
	for _, s := range subs {
		if err := e.deliver(s, name, params); err != nil {
			errs = append(errs, fmt.Errorf("%s to %s: %w", name, s.socket, err))
		}
	}
	return errors.Join(errs...)
}

// eventPayload is evi_build_payload without id: no "params" member when there are none.
func eventPayload(method string, params []byte) []byte {
	b := append([]byte(`{"jsonrpc":"2.0","method":`), appendCJSONString(nil, method)...)
	if len(params) > 0 {
		b = append(b, `,"params":`...)
		b = append(b, params...)
	}
	return append(b, '}')
}

func (e *osipsEmu) deliver(s *osipsSub, name string, params []byte) error {
	switch s.proto {
	case "udp":
		addr, err := net.ResolveUDPAddr("udp4", net.JoinHostPort(s.host, strconv.Itoa(s.port)))
		if err != nil {
			return err
		}
		_, err = e.udpOut.WriteTo(eventPayload(name, params), addr)
		return err
	case "unix":
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: s.rest, Net: "unixgram"})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(eventPayload(name, params))
		return err
	case "tcp":
		method := name
		if s.method != "" {
			method = s.method
		}
		return e.stream(net.JoinHostPort(s.host, strconv.Itoa(s.port)), eventPayload(method, params))
	case "virtual":
		return e.deliverVirtual(s, name, params)
	}
	return fmt.Errorf("%s delivery is not emulated", s.proto)
}

// deliverVirtual applies event_virtual's policies as 3.6.8 does: PARALLEL sends to
// every member; ROUND-ROBIN strictly alternates and loses a dead member's turns;
// FAILOVER takes the first member that accepts, skips a failed one for
// FailoverTimeout, and drops the event when every member is failed or skipped. A UDP
// member fails only when the send itself does.
func (e *osipsEmu) deliverVirtual(s *osipsSub, name string, params []byte) error {
	f := strings.Fields(s.rest)
	policy, members := f[0], f[1:]
	if len(members) == 0 {
		return fmt.Errorf("virtual:%s has no members", policy)
	}
	member := func(m string) error {
		ms, ok := parseSocket(m)
		if !ok {
			return fmt.Errorf("bad member %q", m)
		}
		return e.deliver(ms, name, params)
	}
	switch policy {
	case "ROUND-ROBIN":
		e.mu.Lock()
		m := members[s.rr%len(members)]
		s.rr++
		e.mu.Unlock()
		return member(m)
	case "FAILOVER":
		timeout := e.cfg.FailoverTimeout
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		var errs []error
		for _, m := range members {
			e.mu.Lock()
			skip := time.Now().Before(s.failedUntil[m])
			e.mu.Unlock()
			if skip {
				continue
			}
			err := member(m)
			if err == nil {
				return nil
			}
			errs = append(errs, err)
			e.mu.Lock()
			if s.failedUntil == nil {
				s.failedUntil = make(map[string]time.Time)
			}
			s.failedUntil[m] = time.Now().Add(timeout)
			e.mu.Unlock()
		}
		return fmt.Errorf("FAILOVER: no member took the event, dropped: %w", errors.Join(errs...))
	}
	var errs []error
	for _, m := range members {
		errs = append(errs, member(m))
	}
	return errors.Join(errs...)
}

// osipsStream is event_stream's one persistent connection to a destination.
type osipsStream struct {
	c       net.Conn
	mu      sync.Mutex
	pending map[int64]chan error // reliable mode: event id -> outcome
	dead    bool
}

func (st *osipsStream) close(err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.dead = true
	_ = st.c.Close()
	for id, ch := range st.pending {
		ch <- err
		delete(st.pending, id)
	}
}

// read parses the replies, concatenated JSON values: a reply with the id of a waiting
// event settles it ("error" member: failed); a reply without a numeric id tears the
// connection down and fails every waiting event; garbage closes the connection.
func (st *osipsStream) read() {
	dec := json.NewDecoder(st.c)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			st.close(fmt.Errorf("event_stream connection closed: %w", err))
			return
		}
		v, err := fastjson.ParseBytes(raw)
		idv := member(v, "id")
		if err != nil || idv == nil || idv.Type() != fastjson.TypeNumber {
			st.close(fmt.Errorf("event_stream reply without a numeric id: %s", raw))
			return
		}
		st.mu.Lock()
		ch, ok := st.pending[int64(valueint(idv.GetFloat64()))]
		delete(st.pending, int64(valueint(idv.GetFloat64())))
		st.mu.Unlock()
		if !ok {
			continue // "no pending queries with id N found!"
		}
		if ev := member(v, "error"); ev != nil {
			ch <- fmt.Errorf("event_stream reply is an error: %s", ev)
		} else {
			ch <- nil
		}
	}
}

// stream writes to event_stream's one persistent connection per destination, opened
// on the first event; a broken connection loses the event and the next one reconnects.
// In reliable mode it also waits for the reply.
func (e *osipsEmu) stream(addr string, payload []byte) error {
	e.sendMu.Lock()
	st := e.streams[addr]
	if st == nil || st.dead {
		c, err := net.DialTimeout("tcp4", addr, time.Second)
		if err != nil {
			e.sendMu.Unlock()
			return err
		}
		st = &osipsStream{c: c, pending: make(map[int64]chan error)}
		e.streams[addr] = st
		if e.cfg.StreamReliable {
			go st.read()
		} else {
			go func() { _, _ = io.Copy(io.Discard, c) }() // notification mode reads and drops replies
		}
	}
	var ch chan error
	if e.cfg.StreamReliable {
		e.nextID += 4
		if e.nextID <= 0 {
			e.nextID = 4
		}
		id := e.nextID
		payload = append(fmt.Appendf(nil, `{"id":%d,`, id), payload[1:]...)
		ch = make(chan error, 1)
		st.mu.Lock()
		st.pending[int64(id)] = ch
		st.mu.Unlock()
		defer func() {
			st.mu.Lock()
			delete(st.pending, int64(id))
			st.mu.Unlock()
		}()
	}
	_, err := st.c.Write(payload)
	e.sendMu.Unlock()
	if err != nil {
		st.close(err)
		return err
	}
	if ch == nil {
		return nil
	}
	timeout := e.cfg.StreamTimeout
	if timeout <= 0 {
		timeout = time.Second
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-ch:
		return err
	case <-t.C:
		return fmt.Errorf("event_stream: no reply within %s", timeout)
	}
}

func (e *osipsEmu) subscriptions() []OpenSIPSSubscription {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now().Unix()
	var out []OpenSIPSSubscription
	for id, name := range e.events {
		e.purge(id, now)
		for _, s := range e.subs[id] {
			out = append(out, OpenSIPSSubscription{Event: name, Socket: s.socket, Expire: s.expire, TTL: int(s.since + int64(s.expire) - now)})
		}
	}
	return out
}
