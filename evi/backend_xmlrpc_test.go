package evi

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestXMLRPCSocket(t *testing.T) {
	checkSocketStrings(t, []socketCase{
		{"xmlrpc:127.0.0.1:9301:my_handler", "xmlrpc:127.0.0.1:9301:my_handler", ""},
		{"xmlrpc:localhost:8080/RPC:m", "xmlrpc:localhost:8080/RPC:m", ""},
		{"xmlrpc:127.0.0.1:9301", "", "no method"},
		{"xmlrpc:127.0.0.1:9301:", "", "empty method"},
		{"xmlrpc::9301:m", "", "want xmlrpc:HOST"},
		{"xmlrpc:127.0.0.1:0:m", "", "port"},
		{"xmlrpc:127.0.0.1:http:m", "", "port"},
	})
}

// xmlrpcPeer is a real TCP server that records each request's exact bytes
// and answers with a status line, one connection per request.
type xmlrpcPeer struct {
	ln     net.Listener
	status string // "" = read and hang up without answering
	mu     sync.Mutex
	got    []string
}

func newXMLRPCPeer(t *testing.T, status string) *xmlrpcPeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &xmlrpcPeer{ln: ln, status: status}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.handle(c)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return p
}

func (p *xmlrpcPeer) handle(c net.Conn) {
	defer c.Close()
	raw, err := readHTTPRequest(bufio.NewReader(c))
	if err != nil {
		return
	}
	p.mu.Lock()
	p.got = append(p.got, raw)
	p.mu.Unlock()
	if p.status != "" {
		io.WriteString(c, "HTTP/1.1 "+p.status+"\r\nContent-Type: text/xml\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	}
}

// readHTTPRequest returns one request's bytes exactly as sent.
func readHTTPRequest(r *bufio.Reader) (string, error) {
	var head strings.Builder
	n := 0
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		head.WriteString(line)
		if line == "\r\n" {
			break
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "Content-length") {
			for _, c := range strings.TrimSpace(v) {
				n = n*10 + int(c-'0')
			}
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return "", err
	}
	return head.String() + string(body), nil
}

func (p *xmlrpcPeer) received() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.got...)
}

// captures/event-04-xmlrpc.txt, byte for byte, with this test's port.
func TestXMLRPCRequestBytes(t *testing.T) {
	p := newXMLRPCPeer(t, "200 OK")
	hostport := p.ln.Addr().String()
	b, err := NewBackend("xmlrpc:"+hostport+":my_handler", Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Deliver(ctx, &Event{Name: "E_MY_EVENT", Params: []byte(`{"k":"v w","n":1}`)}); err != nil {
		t.Fatal(err)
	}
	want := "POST /RPC2 HTTP/1.1\r\nHost: " + hostport + "\r\nConnection: close\r\nUser-Agent: OpenSIPS XMLRPC Notifier\r\nContent-type: text/xml\r\nContent-length: 291\r\n\r\n<?xml version=\"1.0\"?>\n<methodCall>\n<methodName>my_handler</methodName>\n<params>\n<param>\n<value><string>E_MY_EVENT</string></value>\n</param>\n<param>\n<name>k</name>\n<value><string>v w</string></value>\n</param>\n<param>\n<name>n</name>\n<value><int>1</int></value>\n</param>\n</params>\n</methodCall>"
	if got := p.received(); len(got) != 1 || got[0] != want {
		t.Fatalf("request =\n%q\nwant\n%q", got, want)
	}
}

// Unlike the module, values are escaped: the capture's "x<y" went out raw.
func TestXMLRPCEscapesAndNulls(t *testing.T) {
	b, err := NewBackend("xmlrpc:127.0.0.1:9301/custom/path:m", Deps{})
	if err != nil {
		t.Fatal(err)
	}
	req, err := b.(*xmlrpcBackend).appendRequest(nil, &Event{Name: "E_X", Params: []byte(`{"a&b":"x<y>\"z\"","":null,"o":{"k":1}}`)})
	if err != nil {
		t.Fatal(err)
	}
	s := string(req)
	for _, want := range []string{
		"POST /custom/path HTTP/1.1\r\nHost:127.0.0.1:9301\r\n", // the module's bytes with a path
		"<param>\n<name>a&amp;b</name>\n<value><string>x&lt;y&gt;\"z\"</string></value>\n</param>\n",
		"<param>\n<value><string></string></value>\n</param>\n", // "" key: unnamed; null: empty string
		"<param>\n<name>o</name>\n<value><string>{\"k\":1}</string></value>\n</param>\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("request lacks %q:\n%s", want, s)
		}
	}
	// The body must be well-formed enough for an XML-RPC server.
	hr, err := http.ReadRequest(bufio.NewReader(strings.NewReader(s)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(hr.Body)
	if int64(len(body)) != hr.ContentLength {
		t.Fatalf("body is %d bytes, Content-length says %d", len(body), hr.ContentLength)
	}
}

func TestXMLRPCOutcomes(t *testing.T) {
	for _, tc := range []struct{ status, err string }{
		{"200 OK", ""},
		{"204 No Content", ""},
		{"500 Internal Server Error", "500"},
		{"", "no HTTP answer"},
	} {
		t.Run(tc.status, func(t *testing.T) {
			p := newXMLRPCPeer(t, tc.status)
			b, err := NewBackend("xmlrpc:"+p.ln.Addr().String()+":m", Deps{})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			err = b.Deliver(ctx, &Event{Name: "E_X"})
			if tc.err == "" && err != nil {
				t.Fatalf("Deliver = %v", err)
			}
			if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("Deliver = %v, want an error saying %q", err, tc.err)
			}
		})
	}
}

// A server that accepts and never answers costs one ctx deadline, no more.
func TestXMLRPCSilentServerTimesOut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	b, err := NewBackend("xmlrpc:"+ln.Addr().String()+":m", Deps{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = b.Deliver(ctx, &Event{Name: "E_X"})
	if err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("Deliver = %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Deliver took %v with a 200ms deadline", d)
	}
}
