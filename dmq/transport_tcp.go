package dmq

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// tcpTransport carries KDMQ over TCP for nodes whose URI says
// ;transport=tcp. A stream needs Content-Length framing and no
// retransmissions (RFC 3261 §17.1.2.2: Timer E only on unreliable transports);
// Timer F still bounds the wait.
type tcpTransport struct {
	t   *transport
	ln  *net.TCPListener
	ctx context.Context // the node's run context: connections live as long

	mu     sync.Mutex
	conns  map[netip.AddrPort]*tcpConn // outgoing, by destination
	all    map[*tcpConn]struct{}
	closed bool // set before wg.Wait: no reader may start after
	wg     sync.WaitGroup
}

type tcpConn struct {
	c  net.Conn
	mu sync.Mutex // one message per write, never interleaved
}

func (c *tcpConn) write(raw []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := c.c.Write(raw)
	return err
}

func listenTCP(addr NodeAddr) (*net.TCPListener, error) {
	ap, err := addr.udpAddr()
	if err != nil {
		return nil, fmt.Errorf("listen %s: host must be an IP address: %w", addr, err)
	}
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
	if err != nil {
		return nil, fmt.Errorf("listen %s over tcp: %w", addr, err)
	}
	return ln, nil
}

func (tt *tcpTransport) run(ctx context.Context) {
	if tt.ln == nil {
		<-ctx.Done()
		tt.closeAll()
		tt.wg.Wait()
		return
	}
	go func() {
		<-ctx.Done()
		tt.ln.Close()
		tt.closeAll()
	}()
	for {
		c, err := tt.ln.Accept()
		if err != nil {
			break
		}
		tt.serve(ctx, &tcpConn{c: c}, nil)
	}
	tt.closeAll()
	tt.wg.Wait()
}

func (tt *tcpTransport) closeAll() {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	tt.closed = true
	for c := range tt.all {
		c.c.Close()
	}
}

// serve reads messages from one connection until it closes. Requests are
// answered on the same connection.
func (tt *tcpTransport) serve(ctx context.Context, c *tcpConn, dst *netip.AddrPort) {
	tt.mu.Lock()
	if tt.closed {
		tt.mu.Unlock()
		c.c.Close()
		return
	}
	if tt.all == nil {
		tt.all = make(map[*tcpConn]struct{})
	}
	tt.all[c] = struct{}{}
	tt.wg.Add(1)
	tt.mu.Unlock()
	go func() {
		defer tt.wg.Done()
		defer func() {
			c.c.Close()
			tt.mu.Lock()
			delete(tt.all, c)
			if dst != nil && tt.conns[*dst] == c {
				delete(tt.conns, *dst)
			}
			tt.mu.Unlock()
		}()
		src, _ := netip.ParseAddrPort(c.c.RemoteAddr().String())
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		r := bufio.NewReaderSize(c.c, 64<<10)
		for {
			msg, err := readStreamMessage(r)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
					tt.t.drop("malformed", src, err)
				}
				return
			}
			if msg == nil {
				continue // keepalive CRLF
			}
			tt.t.receive(ctx, msg, src, func(*Message) replier { return c.write })
		}
	}()
}

// readStreamMessage reads one message framed by its Content-Length; a
// missing Content-Length means no body. It returns nil for a bare CRLF.
func readStreamMessage(r *bufio.Reader) ([]byte, error) {
	var head bytes.Buffer
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return nil, fmt.Errorf("%w: header line longer than 64 KiB", ErrMalformed)
			}
			return nil, err
		}
		if head.Len() == 0 && (string(line) == "\r\n" || string(line) == "\n") {
			return nil, nil
		}
		head.Write(line)
		if string(line) == "\r\n" || string(line) == "\n" {
			break
		}
		if head.Len() > maxMessageSize {
			return nil, fmt.Errorf("%w: headers longer than %d bytes", ErrMalformed, maxMessageSize)
		}
	}
	cl := 0
	for _, l := range strings.Split(head.String(), "\n") {
		name, value, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		name = strings.TrimSpace(name)
		if strings.EqualFold(name, "Content-Length") || name == "l" || name == "L" {
			n, err := strconv.Atoi(strings.TrimSpace(value))
			if err != nil || n < 0 || n > maxMessageSize {
				return nil, fmt.Errorf("%w: Content-Length %q", ErrMalformed, strings.TrimSpace(value))
			}
			cl = n
		}
	}
	msg := make([]byte, head.Len()+cl)
	copy(msg, head.Bytes())
	if _, err := io.ReadFull(r, msg[head.Len():]); err != nil {
		return nil, err
	}
	return msg, nil
}

// send writes a request to dst, dialling (and reading from) a connection when
// none is open.
func (tt *tcpTransport) send(ctx context.Context, dst netip.AddrPort, raw []byte) error {
	tt.mu.Lock()
	c := tt.conns[dst]
	tt.mu.Unlock()
	if c == nil {
		// From the listen address's IP, as Kamailio sends from its own
		// socket: the nodes accept a node's claims only from its address,
		// and on a host with several addresses (127.0.0.x in the tests)
		// the kernel would otherwise pick another source.
		d := net.Dialer{Timeout: 3 * time.Second}
		if la, ok := tt.ln.Addr().(*net.TCPAddr); ok && !la.IP.IsUnspecified() {
			d.LocalAddr = &net.TCPAddr{IP: la.IP}
		}
		nc, err := d.DialContext(ctx, "tcp", dst.String())
		if err != nil {
			return fmt.Errorf("connect to %s: %w", dst, err)
		}
		c = &tcpConn{c: nc}
		tt.mu.Lock()
		if tt.conns == nil {
			tt.conns = make(map[netip.AddrPort]*tcpConn)
		}
		if old := tt.conns[dst]; old != nil {
			tt.mu.Unlock()
			nc.Close()
			c = old
		} else {
			tt.conns[dst] = c
			tt.mu.Unlock()
			tt.serve(tt.ctx, c, &dst)
		}
	}
	if err := c.write(raw); err != nil {
		c.c.Close()
		return fmt.Errorf("send to %s over tcp: %w", dst, err)
	}
	return nil
}
