package evi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fastjson"
)

func init() { backendSchemes["xmlrpc"] = newXMLRPCBackend }

// xmlrpcBackend sends each event as OpenSIPS's event_xmlrpc does: an HTTP/1.1
// POST of an XML-RPC methodCall on a new TCP connection, with the event name
// as the first <param> and each named parameter carrying a non-standard
// <name> element, byte for byte the module's request with its default
// modparams (use_struct_param=0).
//
// Two differences, both on purpose: values and names are XML-escaped (the
// module sends "x<y" raw, which no XML parser accepts), and the HTTP status
// is read: a delivery succeeds on a 2xx answer within the deadline, where the
// module sends and hangs up without reading.
type xmlrpcBackend struct {
	addr      string // host:port to dial
	hostHdr   string // host:port as written in the socket
	path      string // "" for the module's fixed /RPC2 first line
	method    string
	firstLine string

	mu  sync.Mutex
	buf []byte
	p   fastjson.Parser
}

func newXMLRPCBackend(rest string, _ Deps) (Backend, error) {
	// As event_xmlrpc: host up to the first ':', then the port, an optional
	// /path, and the method after the next ':'.
	host, rest, ok := strings.Cut(rest, ":")
	if !ok || host == "" {
		return nil, errors.New("xmlrpc: want xmlrpc:HOST:PORT[/PATH]:METHOD")
	}
	portPath, method, ok := strings.Cut(rest, ":")
	if !ok || portPath == "" {
		return nil, errors.New("xmlrpc: no method: want xmlrpc:HOST:PORT[/PATH]:METHOD")
	}
	if method == "" {
		return nil, errors.New("xmlrpc: empty method name: want xmlrpc:HOST:PORT[/PATH]:METHOD")
	}
	port, path, _ := strings.Cut(portPath, "/")
	if path != "" || strings.HasSuffix(portPath, "/") {
		path = "/" + path
	}
	if err := checkHostPort(net.JoinHostPort(host, port)); err != nil {
		return nil, fmt.Errorf("xmlrpc: %w", err)
	}
	if strings.ContainsAny(path, " \r\n") || strings.ContainsAny(method, "\r\n") {
		return nil, errors.New("xmlrpc: spaces and line breaks are not allowed in the path or method")
	}
	b := &xmlrpcBackend{addr: net.JoinHostPort(host, port), hostHdr: host + ":" + port, path: path, method: method}
	if path == "" {
		b.firstLine = "POST /RPC2 HTTP/1.1\r\nHost: "
	} else {
		// The module's own bytes, missing space after "Host:" included.
		b.firstLine = "POST " + path + " HTTP/1.1\r\nHost:"
	}
	return b, nil
}

func (b *xmlrpcBackend) String() string {
	if b.path == "" {
		return "xmlrpc:" + b.hostHdr + ":" + b.method
	}
	return "xmlrpc:" + b.hostHdr + b.path + ":" + b.method
}

func (b *xmlrpcBackend) Deliver(ctx context.Context, ev *Event) error {
	b.mu.Lock()
	req, err := b.appendRequest(b.buf[:0], ev)
	if err == nil {
		// Copied: the connection below runs outside the lock.
		b.buf = req
		req = append([]byte(nil), req...)
	}
	b.mu.Unlock()
	if err != nil {
		return fmt.Errorf("xmlrpc: event %s: %w", ev.Name, err)
	}

	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", b.addr)
	if err != nil {
		return fmt.Errorf("xmlrpc %s: connect: %w (is the XML-RPC server listening?)", b.addr, err)
	}
	defer c.Close()
	// Unblock the write and the read when ctx ends, deadline or not.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })
	defer stop()
	if _, err := c.Write(req); err != nil {
		return fmt.Errorf("xmlrpc %s: write: %w", b.addr, ctxErr(ctx, err))
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return fmt.Errorf("xmlrpc %s: no HTTP answer: %w", b.addr, ctxErr(ctx, err))
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("xmlrpc %s: server answered %s", b.addr, resp.Status)
	}
	return nil
}

func (b *xmlrpcBackend) Close() error { return nil }

// appendRequest appends the whole HTTP request for ev.
func (b *xmlrpcBackend) appendRequest(dst []byte, ev *Event) ([]byte, error) {
	var body []byte
	body = append(body, "<?xml version=\"1.0\"?>\n<methodCall>\n<methodName>"...)
	body = appendXMLEscaped(body, b.method)
	body = append(body, "</methodName>\n<params>\n<param>\n<value><string>"...)
	body = appendXMLEscaped(body, ev.Name)
	body = append(body, "</string></value>\n</param>\n"...)
	err := eachEVIParam(ev, &b.p, func(ep eviParam) {
		body = append(body, "<param>\n"...)
		if len(ep.name) > 0 {
			body = append(body, "<name>"...)
			body = appendXMLEscaped(body, string(ep.name))
			body = append(body, "</name>\n"...)
		}
		if ep.kind == eviInt {
			body = append(body, "<value><int>"...)
			body = append(body, ep.val...)
			body = append(body, "</int></value>\n"...)
		} else {
			body = append(body, "<value><string>"...)
			body = appendXMLEscaped(body, string(ep.val))
			body = append(body, "</string></value>\n"...)
		}
		body = append(body, "</param>\n"...)
	})
	if err != nil {
		return nil, err
	}
	body = append(body, "</params>\n</methodCall>"...)

	dst = append(dst, b.firstLine...)
	dst = append(dst, b.hostHdr...)
	dst = append(dst, "\r\nConnection: close\r\nUser-Agent: OpenSIPS XMLRPC Notifier\r\nContent-type: text/xml\r\nContent-length: "...)
	dst = strconv.AppendInt(dst, int64(len(body)), 10)
	dst = append(dst, "\r\n\r\n"...)
	return append(dst, body...), nil
}

// appendXMLEscaped escapes what XML text cannot hold raw: '<', '&' and '>'.
// Quotes stay, as in the module's bytes; other bytes go through as they are,
// invalid UTF-8 included.
func appendXMLEscaped(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '<':
			dst = append(dst, "&lt;"...)
		case '>':
			dst = append(dst, "&gt;"...)
		case '&':
			dst = append(dst, "&amp;"...)
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// aLongTimeAgo is a deadline in the past: setting it unblocks any I/O at once.
var aLongTimeAgo = time.Unix(1, 0)

// ctxErr says "deadline" rather than "i/o timeout" when ctx ended the I/O.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	return err
}
