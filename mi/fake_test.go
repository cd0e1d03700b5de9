package mi

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
	"github.com/valyala/fastjson"
)

// fakeProxy is a scripted MI server that records the exact bytes a client sends:
// whole datagrams, whole HTTP requests, whole FIFO lines.
type fakeProxy struct {
	t       *testing.T
	dialect Dialect
	target  string
	reqs    chan []byte
	// reply answers a JSON request; nil means the echo default. Datagram fakes send
	// every element as its own datagram.
	reply func(req []byte) [][]byte
	// fifoReplyDir, when set, is where the FIFO fake writes replies instead of beside
	// its FIFO, as a proxy with another reply_dir does.
	fifoReplyDir string
	mu           sync.Mutex
}

func (f *fakeProxy) answer(req []byte) [][]byte {
	f.mu.Lock()
	r := f.reply
	f.mu.Unlock()
	if r != nil {
		return r(req)
	}
	return [][]byte{echoReply(req)}
}

func (f *fakeProxy) setReply(r func(req []byte) [][]byte) {
	f.mu.Lock()
	f.reply = r
	f.mu.Unlock()
}

// echoReply answers with the request's params (or "OK") as result, under its id.
func echoReply(req []byte) []byte {
	v, err := fastjson.ParseBytes(req)
	if err != nil {
		return []byte("400 Parse_error")
	}
	res := []byte(`"OK"`)
	if p := v.Get("params"); p != nil {
		res = p.MarshalTo(nil)
	}
	b := append([]byte(`{"jsonrpc":"2.0","result":`), res...)
	b = append(b, `,"id":`...)
	b = v.Get("id").MarshalTo(b)
	return append(b, '}')
}

func (f *fakeProxy) record(b []byte) {
	select {
	case f.reqs <- append([]byte(nil), b...):
	default:
	}
}

// next returns the next recorded request.
func (f *fakeProxy) next() []byte {
	f.t.Helper()
	select {
	case b := <-f.reqs:
		return b
	case <-time.After(5 * time.Second):
		f.t.Fatal("fake proxy: no request within 5s")
		return nil
	}
}

func newFake(t *testing.T, d Dialect, transport string) *fakeProxy {
	t.Helper()
	f := &fakeProxy{t: t, dialect: d, reqs: make(chan []byte, 1024)}
	switch transport {
	case "udp":
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		f.target = string(d) + ":udp:" + c.LocalAddr().String()
		go f.serveDatagram(c)
	case "unix":
		path := filepath.Join(t.TempDir(), "mi.sock")
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		f.target = string(d) + ":unix:" + path
		go f.serveDatagram(c)
	case "http":
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		path := "/mi"
		if d == Kamailio {
			path = "/RPC"
		}
		f.target = string(d) + ":http://" + l.Addr().String() + path
		go f.serveHTTP(l)
	case "fifo":
		dir := t.TempDir()
		path := filepath.Join(dir, "mi_fifo")
		if err := syscall.Mkfifo(path, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		f.target = string(d) + ":fifo:" + path
		go f.serveFIFO(r, dir)
	default:
		t.Fatalf("fake proxy: transport %q", transport)
	}
	return f
}

func (f *fakeProxy) serveDatagram(c net.PacketConn) {
	buf := make([]byte, 1<<17)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		f.record(buf[:n])
		for _, r := range f.answer(buf[:n]) {
			_, _ = c.WriteTo(r, from)
		}
	}
}

func (f *fakeProxy) serveHTTP(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				var head []byte
				for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
					line, err := br.ReadBytes('\n')
					if err != nil {
						return
					}
					head = append(head, line...)
				}
				n := 0
				for _, h := range strings.Split(string(head), "\r\n") {
					if v, ok := strings.CutPrefix(h, "Content-Length: "); ok {
						n, _ = strconv.Atoi(v)
					}
				}
				body := make([]byte, n)
				if _, err := io.ReadFull(br, body); err != nil {
					return
				}
				f.record(append(head, body...))
				replies := f.answer(body)
				if len(replies) == 0 {
					continue
				}
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(replies[0]), replies[0])
				if bytes.Contains(head, []byte("Connection: close")) {
					return
				}
			}
		}()
	}
}

func (f *fakeProxy) serveFIFO(r *os.File, dir string) {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return
		}
		f.record(line)
		line = bytes.TrimRight(line, "\n")
		var name string
		req := line
		if f.dialect == OpenSIPS {
			n, rest, ok := bytes.Cut(bytes.TrimPrefix(line, []byte(":")), []byte(":"))
			if !ok {
				continue
			}
			name, req = string(n), rest
		} else {
			v, err := fastjson.ParseBytes(line)
			if err != nil {
				continue
			}
			name = string(v.GetStringBytes("reply_name"))
		}
		replies := f.answer(req)
		if name == "" || len(replies) == 0 {
			continue
		}
		f.mu.Lock()
		rdir := dir
		if f.fifoReplyDir != "" {
			rdir = f.fifoReplyDir
		}
		f.mu.Unlock()
		w, err := os.OpenFile(filepath.Join(rdir, name), os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			continue
		}
		// in two writes, as mi_fifo streams big replies
		half := len(replies[0]) / 2
		_, _ = w.Write(replies[0][:half])
		_, _ = w.Write(replies[0][half:])
		w.Close()
	}
}

// waitFor polls cond until it holds or 5 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, 5*time.Second, what, cond)
}
