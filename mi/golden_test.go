package mi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/valyala/fastjson"

	"github.com/sipside/sipside/testenv"
)

// The golden files are the recordings of real tools talking to a real OpenSIPS 3.6.8
// and Kamailio 5.6.3 (testdata/opensips, testdata/kamailio, copied from
// protocol/*/captures). For every well-formed request in them, sipside must put the
// same bytes on the wire, but for the id (and the reply FIFO's name, and the Host
// and Content-Length that depend on them).

type wireRequest struct {
	path string // HTTP request path
	wire []byte // exactly as recorded
	body []byte // the JSON-RPC request inside
}

// pyRepr decodes a Python bytes repr of the captures, failing the test on
// a malformed one.
func pyRepr(t *testing.T, s string) []byte {
	t.Helper()
	b, err := testenv.PyBytes(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readCapture(t *testing.T, name string) []string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(string(b), "\n")
}

// opensipsDatagramRequests: lines after ">>> udp:"/">>> unix:" hold the repr.
func opensipsDatagramRequests(t *testing.T, name string) []wireRequest {
	var out []wireRequest
	lines := readCapture(t, name)
	for i, l := range lines {
		if strings.HasPrefix(l, ">>> ") && i+1 < len(lines) && strings.HasPrefix(lines[i+1], "    b") {
			b := pyRepr(t, lines[i+1])
			out = append(out, wireRequest{wire: b, body: b})
		}
	}
	return out
}

func opensipsHTTPAndFIFORequests(t *testing.T) (httpReqs, fifoReqs []wireRequest) {
	for _, l := range readCapture(t, "opensips/mi-03-http-and-fifo.txt") {
		if !strings.HasPrefix(l, ">>> b") {
			continue
		}
		b := pyRepr(t, l[4:])
		if head, body, ok := bytes.Cut(b, []byte("\r\n\r\n")); ok {
			f := strings.Fields(string(head))
			httpReqs = append(httpReqs, wireRequest{path: f[1], wire: b, body: body})
			continue
		}
		_, rest, _ := bytes.Cut(b[1:], []byte(":"))
		fifoReqs = append(fifoReqs, wireRequest{wire: b, body: bytes.TrimRight(rest, "\n")})
	}
	return httpReqs, fifoReqs
}

// kamailioRequests reads jsonrpcs-*.txt: "----- X request ... -----" then the request text.
func kamailioRequests(t *testing.T, transport string) []wireRequest {
	var out []wireRequest
	lines := readCapture(t, "kamailio/jsonrpcs-"+transport+".txt")
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "----- ") || !strings.Contains(lines[i], " request ") {
			continue
		}
		switch transport {
		case "udp":
			b := []byte(lines[i+1])
			out = append(out, wireRequest{wire: b, body: b})
		case "fifo":
			b := []byte(lines[i+1])
			out = append(out, wireRequest{wire: append(b, '\n'), body: b})
		case "http":
			var head []string
			j := i + 1
			for ; strings.TrimSuffix(lines[j], "\r") != ""; j++ {
				head = append(head, strings.TrimSuffix(lines[j], "\r"))
			}
			body := []byte(lines[j+1])
			wire := append([]byte(strings.Join(head, "\r\n")+"\r\n\r\n"), body...)
			out = append(out, wireRequest{path: strings.Fields(head[0])[1], wire: wire, body: body})
			i = j + 1
		}
	}
	return out
}

// callable reports whether a recorded request is one a client would send, and
// returns its method and params.
func callable(r wireRequest, d Dialect, transport string) (method string, params json.RawMessage, ok bool) {
	// probes of the server, not what a client sends: a trailing newline in a
	// datagram, a Kamailio FIFO request without the reply_name it needs
	if (transport == "udp" || transport == "unix") && bytes.HasSuffix(r.wire, []byte("\n")) {
		return "", nil, false
	}
	if d == Kamailio && transport == "fifo" && !bytes.Contains(r.body, []byte(`"reply_name"`)) {
		return "", nil, false
	}
	if r.path != "" && r.path != "/mi" && r.path != "/mi/" && r.path != "/RPC" {
		return "", nil, false
	}
	if bytes.HasPrefix(r.wire, []byte("GET ")) || (r.path != "" && !bytes.Contains(r.wire, []byte("Content-Type: application/json"))) {
		return "", nil, false
	}
	v, err := fastjson.ParseBytes(r.body)
	if err != nil || v.Type() != fastjson.TypeObject {
		return "", nil, false
	}
	if string(v.GetStringBytes("jsonrpc")) != "2.0" || v.Get("method") == nil || v.Get("method").Type() != fastjson.TypeString || v.Get("id") == nil {
		return "", nil, false
	}
	if p := v.Get("params"); p != nil {
		if p.Type() != fastjson.TypeArray && p.Type() != fastjson.TypeObject {
			return "", nil, false
		}
		// keep the recorded text: the params' own spelling is part of the golden bytes
		var raw map[string]json.RawMessage
		_ = json.Unmarshal(r.body, &raw)
		params = raw["params"]
	}
	return string(v.GetStringBytes("method")), params, true
}

var (
	idMember        = regexp.MustCompile(`,\s*"id":\s*(-?\d+|"[^"]*"|null)`)
	replyNameMember = regexp.MustCompile(`"reply_name":\s*"[^"]*"`)
	fifoPrefix      = regexp.MustCompile(`^:[^:]*:`)
	hostHeader      = regexp.MustCompile(`Host: [^\r]*`)
	lengthHeader    = regexp.MustCompile(`Content-Length: \d+`)
)

func normalizeWire(b []byte) string {
	b = idMember.ReplaceAll(b, nil)
	b = replyNameMember.ReplaceAll(b, []byte(`"reply_name": "R"`))
	b = fifoPrefix.ReplaceAll(b, []byte(":R:"))
	b = hostHeader.ReplaceAll(b, []byte("Host: H"))
	b = lengthHeader.ReplaceAll(b, []byte("Content-Length: N"))
	return string(b)
}

func TestGoldenWire(t *testing.T) {
	osHTTP, osFIFO := opensipsHTTPAndFIFORequests(t)
	sets := []struct {
		name      string
		dialect   Dialect
		transport string
		reqs      []wireRequest
	}{
		{"opensips-udp", OpenSIPS, "udp", opensipsDatagramRequests(t, "opensips/mi-01-datagram-udp.txt")},
		{"opensips-unix", OpenSIPS, "unix", opensipsDatagramRequests(t, "opensips/mi-04-datagram-unix.txt")},
		{"opensips-http", OpenSIPS, "http", osHTTP},
		{"opensips-fifo", OpenSIPS, "fifo", osFIFO},
		{"kamailio-udp", Kamailio, "udp", kamailioRequests(t, "udp")},
		{"kamailio-http", Kamailio, "http", kamailioRequests(t, "http")},
		{"kamailio-fifo", Kamailio, "fifo", kamailioRequests(t, "fifo")},
	}
	for _, set := range sets {
		t.Run(set.name, func(t *testing.T) {
			f := newFake(t, set.dialect, set.transport)
			compared := 0
			for _, r := range set.reqs {
				method, params, ok := callable(r, set.dialect, set.transport)
				if !ok {
					continue
				}
				target := f.target
				if r.path != "" {
					u, _ := url.Parse(strings.TrimPrefix(target, string(set.dialect)+":"))
					u.Path = r.path
					target = string(set.dialect) + ":" + u.String()
				}
				c := newClient(t, target, Options{})
				var p any
				if params != nil {
					p = params
				}
				if _, err := c.Call(context.Background(), method, p); err != nil {
					t.Fatalf("%s: %v", r.body, err)
				}
				got, want := normalizeWire(f.next()), normalizeWire(r.wire)
				if got != want {
					t.Errorf("request differs from the recording\n got %q\nwant %q", got, want)
				}
				compared++
			}
			if compared < 1 {
				t.Fatalf("only %d recorded requests compared: is the recording parsed right?", compared)
			}
			t.Logf("%d recorded requests byte-identical (but for the id)", compared)
		})
	}
}
