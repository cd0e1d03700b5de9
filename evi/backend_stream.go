package evi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
)

func init() { backendSchemes["tcp"] = newStreamBackend }

// reliableSuffix turns on sipside's reliable mode for one tcp: backend.
// OpenSIPS sets reliable_mode for the whole module; sipside sets it per
// socket, at the end of the string, where the module would have taken it as
// part of the method name (no real method ends so).
const reliableSuffix = "?reliable"

// streamBackend sends events as OpenSIPS's event_stream does: JSON-RPC
// objects written back to back, with no delimiter, on one persistent TCP
// connection that is opened on the first event and again on the next event
// after a drop.
//
// Without ?reliable a delivery succeeds when the write completed: the bytes
// are in the kernel, not necessarily read. With ?reliable every event
// carries an id and succeeds only when the receiver answers it with a
// JSON-RPC reply without an "error" member (as reliable_mode=1 does), so
// that a receiver can say "failed".
type streamBackend struct {
	addr     string
	method   string // replaces the event name as the JSON-RPC method when set
	reliable bool

	mu     sync.Mutex // serialises connecting and writing
	conn   *streamOutConn
	nextID uint32
	buf    []byte
}

// streamOutConn is one connection and, in reliable mode, the replies it waits for.
type streamOutConn struct {
	addr string
	c    net.Conn
	done chan struct{} // closed when the reader saw the connection end

	mu      sync.Mutex
	err     error // why the connection ended
	pending map[int64]chan error
}

func newStreamBackend(rest string, _ Deps) (Backend, error) {
	b := &streamBackend{}
	if strings.HasSuffix(rest, reliableSuffix) {
		rest = strings.TrimSuffix(rest, reliableSuffix)
		b.reliable = true
	}
	// As event_stream: the host ends at the first ':' and the port at the
	// first '/'; whatever follows the '/' is the method, verbatim.
	hostport, method, hasMethod := strings.Cut(rest, "/")
	if hasMethod && method == "" {
		return nil, errors.New("tcp: empty method after '/': write tcp:HOST:PORT/METHOD or leave the '/' out")
	}
	host, port, ok := strings.Cut(hostport, ":")
	if !ok || host == "" {
		return nil, fmt.Errorf("tcp: want tcp:HOST:PORT[/METHOD], got %q", rest)
	}
	if strings.Contains(port, ":") {
		return nil, fmt.Errorf("tcp: %q: IPv6 addresses are not supported (as in OpenSIPS); use a host name or an IPv4 address", rest)
	}
	if err := checkHostPort(net.JoinHostPort(host, port)); err != nil {
		return nil, fmt.Errorf("tcp: %w", err)
	}
	b.addr = net.JoinHostPort(host, port)
	b.method = method
	b.nextID = rand.Uint32N(1 << 30)
	return b, nil
}

func (b *streamBackend) String() string {
	s := "tcp:" + b.addr
	if b.method != "" {
		s += "/" + b.method
	}
	if b.reliable {
		s += reliableSuffix
	}
	return s
}

func (b *streamBackend) Deliver(ctx context.Context, ev *Event) error {
	b.mu.Lock()
	sc, err := b.connLocked(ctx)
	if err != nil {
		b.mu.Unlock()
		return err
	}
	var id int64
	var reply chan error
	if b.reliable {
		// Positive int32, as OpenSIPS's receivers read ids with valueint.
		b.nextID = b.nextID%(1<<31-1) + 1
		id = int64(b.nextID)
		reply = make(chan error, 1)
		// Registered before the write: an instant reply must find it.
		if !sc.expect(id, reply) {
			b.mu.Unlock()
			return b.connErr(sc)
		}
	}
	b.buf = appendStreamPayload(b.buf[:0], ev, id, b.method)
	dl, _ := ctx.Deadline()
	sc.c.SetWriteDeadline(dl)
	_, err = sc.c.Write(b.buf)
	if err != nil {
		// A partial write leaves half an object on the stream: the receiver
		// can only resynchronise on a new connection.
		sc.close(err)
		b.conn = nil
		b.mu.Unlock()
		return fmt.Errorf("tcp %s: write: %w", b.addr, err)
	}
	b.mu.Unlock()
	if !b.reliable {
		return nil
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		// As OpenSIPS's timeout: the event failed, the connection stays.
		sc.forget(id)
		return fmt.Errorf("tcp %s: no JSON-RPC reply to id %d before the deadline: %w", b.addr, id, context.Cause(ctx))
	}
}

// connLocked returns the live connection, dialling when there is none or
// the reader saw the last one end.
func (b *streamBackend) connLocked(ctx context.Context) (*streamOutConn, error) {
	if b.conn != nil {
		select {
		case <-b.conn.done:
			b.conn = nil
		default:
			return b.conn, nil
		}
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", b.addr)
	if err != nil {
		return nil, fmt.Errorf("tcp %s: connect: %w (is the receiver listening?)", b.addr, err)
	}
	sc := &streamOutConn{addr: b.addr, c: c, done: make(chan struct{}), pending: make(map[int64]chan error)}
	if b.reliable {
		go sc.read()
	} else {
		go sc.discard()
	}
	b.conn = sc
	return sc, nil
}

func (b *streamBackend) connErr(sc *streamOutConn) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return fmt.Errorf("tcp %s: %w", b.addr, sc.err)
}

// streamOutReply is a JSON-RPC reply; member names match case-insensitively,
// as OpenSIPS's cJSON lookups do.
type streamOutReply struct {
	ID    json.RawMessage `json:"id"`
	Error json.RawMessage `json:"error"`
}

// discard reads and drops whatever the receiver sends, as event_stream does
// without reliable_mode. Its end is how a dropped connection is noticed
// before the next write.
func (sc *streamOutConn) discard() {
	_, err := io.Copy(io.Discard, sc.c)
	if err == nil {
		err = errors.New("connection closed by the receiver")
	}
	sc.close(err)
}

// read matches the receiver's JSON-RPC replies to the events waiting for
// them (reliable mode). Anything that is not a reply with a numeric id ends
// the connection, as it does in OpenSIPS.
func (sc *streamOutConn) read() {
	dec := json.NewDecoder(sc.c)
	for {
		var r streamOutReply
		if err := dec.Decode(&r); err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("connection closed by the receiver")
			} else if !errors.Is(err, net.ErrClosed) {
				var se *json.SyntaxError
				if errors.As(err, &se) {
					err = fmt.Errorf("receiver sent something that is not JSON: %w", err)
				}
			}
			sc.close(err)
			return
		}
		id, err := strconv.ParseInt(string(r.ID), 10, 64)
		if err != nil {
			// OpenSIPS tears the connection down on a reply it cannot match.
			sc.close(fmt.Errorf("reply without a numeric id (%.40s)", r.ID))
			sc.c.Close()
			return
		}
		var res error
		if r.Error != nil { // any "error" member fails the event, even null
			res = fmt.Errorf("tcp %s: receiver answered id %d with error %s", sc.addr, id, r.Error)
		}
		sc.mu.Lock()
		ch := sc.pending[id]
		delete(sc.pending, id)
		sc.mu.Unlock()
		if ch != nil {
			ch <- res
		}
	}
}

func (sc *streamOutConn) expect(id int64, ch chan error) bool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.err != nil {
		return false
	}
	sc.pending[id] = ch
	return true
}

func (sc *streamOutConn) forget(id int64) {
	sc.mu.Lock()
	delete(sc.pending, id)
	sc.mu.Unlock()
}

// close ends the connection once and fails every event waiting for a reply.
func (sc *streamOutConn) close(err error) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.err != nil {
		return
	}
	sc.err = err
	sc.c.Close()
	close(sc.done)
	for id, ch := range sc.pending {
		ch <- fmt.Errorf("tcp %s: connection lost before the reply to id %d: %w", sc.addr, id, err)
		delete(sc.pending, id)
	}
}

func (b *streamBackend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil {
		b.conn.close(net.ErrClosed)
		b.conn = nil
	}
	return nil
}

// eventNotification is the JSON-RPC notification OpenSIPS's event_datagram,
// event_stream and event_rabbitmq send for ev: the proxy's own bytes when it
// sent a notification, else one built from Name and Params. An event that
// came as a request (event_stream in reliable mode) loses its id, which
// belongs to the proxy's connection.
func eventNotification(ev *Event) []byte {
	if ev.Raw != nil && !rawHasID(ev.Raw) {
		return ev.Raw
	}
	return appendStreamPayload(nil, ev, 0, "")
}

// appendStreamPayload appends the JSON-RPC object OpenSIPS's evi_build_payload
// makes: "id" first when id != 0, then jsonrpc, method and params.
func appendStreamPayload(dst []byte, ev *Event, id int64, method string) []byte {
	if id == 0 && method == "" && ev.Raw != nil && !rawHasID(ev.Raw) {
		return append(dst, ev.Raw...)
	}
	dst = append(dst, '{')
	if id != 0 {
		dst = append(dst, `"id":`...)
		dst = strconv.AppendInt(dst, id, 10)
		dst = append(dst, ',')
	}
	if method == "" {
		method = ev.Name
	}
	dst = append(dst, `"jsonrpc":"2.0","method":`...)
	dst = appendJSONString(dst, method)
	if ev.Params != nil {
		dst = append(dst, `,"params":`...)
		dst = append(dst, ev.Params...)
	}
	return append(dst, '}')
}

// rawHasID tells whether the proxy sent ev as a request (event_stream in
// reliable mode): its id belongs to that connection, never to ours.
func rawHasID(raw []byte) bool {
	n, _, err := ParseNotification(raw)
	return err != nil || n.ID != nil
}
