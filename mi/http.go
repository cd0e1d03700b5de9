package mi

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// maxHTTPReply bounds a reply body; MI replies are JSON, big ones (ul_dump, htable.dump)
// reach megabytes, never this.
const maxHTTPReply = 256 << 20

// maxConns bounds the connections one client opens: a proxy serves its management
// port with one or a few processes, and more connections only queue there (and
// closing surplus idle ones made every call beyond them dial anew).
const maxConns = 16

// httpTransport writes requests by hand so that the bytes on the wire are exactly
// what the proxies' own tools send (testdata/*-http.golden), and reads replies with
// net/http's parser, which copes with Kamailio's fault text in the status line and
// its stray "Sia:" header. Kamailio keeps connections open, so idle ones are reused;
// OpenSIPS mi_http is asked to close, as its tools do.
type httpTransport struct {
	t         Target
	u         *url.URL
	addr      string
	keepAlive bool
	tlsConf   *tls.Config

	slots chan struct{} // one per connection in use
	mu    sync.Mutex
	idle  []net.Conn
	shut  bool
}

func newHTTP(t Target) (*httpTransport, error) {
	u, err := url.Parse(t.Addr)
	if err != nil {
		return nil, fmt.Errorf("bad MI URL %q: %w", t.Addr, err)
	}
	h := &httpTransport{t: t, u: u, addr: u.Host, keepAlive: t.Dialect == Kamailio, slots: make(chan struct{}, maxConns)}
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		h.addr = net.JoinHostPort(u.Hostname(), port)
	}
	if u.Scheme == "https" {
		h.tlsConf = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	}
	return h, nil
}

func (h *httpTransport) request(body []byte) []byte {
	path := h.u.RequestURI()
	b := make([]byte, 0, 160+len(body))
	b = append(b, "POST "...)
	b = append(b, path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, h.u.Host...)
	if h.t.Dialect == OpenSIPS {
		b = append(b, "\r\nAccept: application/json"...)
	}
	// mi_http closes the connection without a word when Content-Type is missing.
	b = append(b, "\r\nContent-Type: application/json\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	if !h.keepAlive {
		b = append(b, "\r\nConnection: close"...)
	}
	b = append(b, "\r\n\r\n"...)
	return append(b, body...)
}

func (h *httpTransport) roundTrip(ctx context.Context, id uint32, method string, params []byte) ([]byte, error) {
	req := h.request(encodeRequest(h.t.Dialect, method, params, id, ""))
	select {
	case h.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-h.slots }()
	for attempt := 0; ; attempt++ {
		conn, reused, err := h.get(ctx)
		if err != nil {
			return nil, err
		}
		body, keep, got, err := h.exchange(ctx, conn, req)
		if err == nil {
			if keep {
				h.put(conn)
			} else {
				conn.Close()
			}
			return body, nil
		}
		conn.Close()
		// A reused connection the server closed while idle fails before any reply byte:
		// the request never ran, so it is safe to send it once more on a new one.
		if reused && !got && attempt == 0 && ctx.Err() == nil && isClosedConn(err) {
			continue
		}
		return nil, err
	}
}

func isClosedConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (h *httpTransport) get(ctx context.Context) (net.Conn, bool, error) {
	h.mu.Lock()
	if h.shut {
		h.mu.Unlock()
		return nil, false, net.ErrClosed
	}
	if n := len(h.idle); n > 0 {
		c := h.idle[n-1]
		h.idle = h.idle[:n-1]
		h.mu.Unlock()
		return c, true, nil
	}
	h.mu.Unlock()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", h.addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil, false, fmt.Errorf("connection refused by %s: is the proxy's HTTP server listening there? (%w)", h.addr, err)
		}
		return nil, false, fmt.Errorf("connect to %s: %w", h.addr, err)
	}
	if h.tlsConf != nil {
		tc := tls.Client(c, h.tlsConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, false, fmt.Errorf("TLS handshake with %s: %w", h.addr, err)
		}
		c = tc
	}
	return c, false, nil
}

func (h *httpTransport) put(c net.Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.shut || len(h.idle) >= maxConns {
		c.Close()
		return
	}
	h.idle = append(h.idle, c)
}

// exchange sends one request and reads its reply. got reports whether any reply byte arrived.
func (h *httpTransport) exchange(ctx context.Context, conn net.Conn, req []byte) (body []byte, keep, got bool, err error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	} else {
		_ = conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		// If the cancel fired, it may still set a past deadline: do not reuse the conn.
		if !stop() {
			keep = false
		}
	}()
	if _, err := conn.Write(req); err != nil {
		return nil, false, false, h.ioError(ctx, "send to", err)
	}
	cr := &countingReader{r: conn}
	body, closeConn, err := readHTTPReply(bufio.NewReader(cr))
	if err != nil {
		if cr.n == 0 && errors.Is(err, io.EOF) {
			return nil, false, false, fmt.Errorf("%s closed the connection without a reply: %w", h.addr, err)
		}
		var se *statusError
		if errors.As(err, &se) {
			return nil, false, true, fmt.Errorf("HTTP %s from %s: is %s the MI path? (%q)", se.status, h.addr, h.u.Path, clip(se.body, 80))
		}
		return nil, false, cr.n > 0, h.ioError(ctx, "read reply from", err)
	}
	return body, h.keepAlive && !closeConn, true, nil
}

// statusError is an HTTP reply that carries no JSON-RPC answer.
type statusError struct {
	status string
	body   []byte
}

func (e *statusError) Error() string { return "HTTP " + e.status }

// readHTTPReply reads one HTTP reply. JSON-RPC answers come with 200 (OpenSIPS) or
// with the fault in the status line (Kamailio "500 Method Not Found"); other replies
// mean a wrong URL or method.
func readHTTPReply(br *bufio.Reader) (body []byte, closeConn bool, err error) {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(resp.Body, maxHTTPReply))
	if err != nil {
		return nil, false, err
	}
	if resp.StatusCode != http.StatusOK && !strings.HasPrefix(strings.TrimSpace(string(body)), "{") {
		return nil, true, &statusError{status: resp.Status, body: body}
	}
	return body, resp.Close, nil
}

func (h *httpTransport) ioError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("%s %s: %w", what, h.addr, err)
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func (h *httpTransport) close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.shut = true
	for _, c := range h.idle {
		c.Close()
	}
	h.idle = nil
	return nil
}
