package testenv_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

// The recordings of a real OpenSIPS 3.6.8 live beside the mi package's golden files.
const osipsCaptures = "../mi/testdata/opensips/"

// recordedServer is MI version's "Server" in every recording.
const recordedServer = "OpenSIPS (3.6.8 (x86_64/linux))"

// release turns replies recorded from OpenSIPS 3.6.8 into what the running proxy
// (OPENSIPS_BIN may be another release) must send: its own version string, its own
// events_list ids, no events_list entry for an event it does not have (3.4 and 3.5
// have no E_FLATSTORE_ROTATION), and an HTTP Content-Length to match. Against the
// emulator, which is the recording, it changes nothing.
type release struct {
	server string
	ids    map[string]int
}

func runningRelease(o *testenv.OpenSIPSServer) release {
	return release{server: o.Version(), ids: o.EventIDs()}
}

var (
	eventEntryRe  = regexp.MustCompile(`\{"name":"([A-Z0-9_]+)","id":\d+\},?`)
	eventIDRe     = regexp.MustCompile(`"name":"([A-Z0-9_]+)","id":\d+`)
	contentLenRe  = regexp.MustCompile(`(?m)^Content-Length: \d+`)
	httpHeadSplit = []byte("\r\n\r\n")
)

func (r release) apply(b []byte) []byte {
	b = bytes.ReplaceAll(b, []byte(recordedServer), []byte(r.server))
	b = eventEntryRe.ReplaceAllFunc(b, func(m []byte) []byte {
		if _, ok := r.ids[string(eventEntryRe.FindSubmatch(m)[1])]; ok {
			return m
		}
		return nil
	})
	b = bytes.Replace(b, []byte(`},]`), []byte(`}]`), 1) // the last entry dropped
	b = eventIDRe.ReplaceAllFunc(b, func(m []byte) []byte {
		name := string(eventIDRe.FindSubmatch(m)[1])
		if id, ok := r.ids[name]; ok {
			return []byte(`"name":"` + name + `","id":` + strconv.Itoa(id))
		}
		return m
	})
	if head, body, ok := bytes.Cut(b, httpHeadSplit); ok && bytes.HasPrefix(head, []byte("HTTP/")) {
		head = contentLenRe.ReplaceAll(head, []byte("Content-Length: "+strconv.Itoa(len(body))))
		b = append(append(head, httpHeadSplit...), body...)
	}
	return b
}

// exchange is one request of a recording and the reply it got (nil: none).
type exchange struct {
	title string
	req   []byte
	reply []byte
}

// pyBytes decodes a Python bytes repr of the captures, failing the test on
// a malformed one.
func pyBytes(t *testing.T, s string) []byte {
	t.Helper()
	b, err := testenv.PyBytes(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readTranscript parses the ">>>"/"<<<" blocks of a mi-0*-datagram capture.
func readTranscript(t *testing.T, name string) []exchange {
	t.Helper()
	f, err := os.Open(osipsCaptures + name)
	if err != nil {
		t.Fatalf("recording: %v", err)
	}
	defer f.Close()
	var (
		out  []exchange
		cur  *exchange
		next string
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "### "):
			out = append(out, exchange{title: line[4:]})
			cur = &out[len(out)-1]
		case strings.HasPrefix(line, ">>> "):
			next = "req"
		case strings.HasPrefix(line, "<<< "):
			next = "reply"
		case strings.HasPrefix(line, "    b'") && cur != nil && next != "":
			if next == "req" {
				cur.req = pyBytes(t, line)
			} else {
				cur.reply = pyBytes(t, line)
			}
			next = ""
		}
	}
	return out
}

// volatile replaces what differs between runs: ttl countdowns, uptime, timestamps.
var volatile = regexp.MustCompile(`"ttl":\d+|"core:timestamp":\d+|"(Now|Up since|Up time)":"[^"]*"`)

func normalize(b []byte) []byte {
	return volatile.ReplaceAllFunc(b, func(m []byte) []byte {
		k, _, _ := bytes.Cut(m, []byte(":"))
		return append(k, ":X"...)
	})
}

// portMap moves the recording's listener ports to free ones of this test.
type portMap struct{ old, new []string }

func (p portMap) apply(b []byte) []byte {
	for i := range p.old {
		b = bytes.ReplaceAll(b, []byte("127.0.0.1:"+p.old[i]), []byte("127.0.0.1:"+p.new[i]))
	}
	return b
}

func udpListener(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readDatagram(t *testing.T, c net.Conn, d time.Duration) []byte {
	t.Helper()
	buf := make([]byte, 1<<17)
	_ = c.SetReadDeadline(time.Now().Add(d))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read from %s: %v", c.LocalAddr(), err)
	}
	return buf[:n]
}

// TestOpenSIPSReplaysDatagramRecording sends every request of the mi_datagram recording
// and wants the recorded reply byte for byte, and the recorded event datagrams and
// event_stream bytes at the subscribed listeners.
func TestOpenSIPSReplaysDatagramRecording(t *testing.T) {
	// HTTP: the recording's OpenSIPS had httpd, whose command shows in "which".
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{HTTP: true})
	if o.Real {
		t.Log("against a real OpenSIPS (OPENSIPS_BIN)")
	}
	udp := map[string]*net.UDPConn{}
	var pm portMap
	for _, p := range []string{"9001", "9002", "9003", "9004", "9005"} {
		c := udpListener(t)
		udp[p] = c
		pm.old = append(pm.old, p)
		pm.new = append(pm.new, strconv.Itoa(c.LocalAddr().(*net.UDPAddr).Port))
	}
	streams := map[string]chan []byte{}
	for _, p := range []string{"9101", "9102"} {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		ch := make(chan []byte, 1)
		streams[p] = ch
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			var got []byte
			buf := make([]byte, 4096)
			for {
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				n, err := c.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					ch <- got
					return
				}
			}
		}()
		pm.old = append(pm.old, p)
		pm.new = append(pm.new, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	}

	mi, err := net.Dial("udp", o.MIUDP)
	if err != nil {
		t.Fatal(err)
	}
	defer mi.Close()
	rel := runningRelease(o)
	exchanges := readTranscript(t, "mi-01-datagram-udp.txt")
	if len(exchanges) < 40 {
		t.Fatalf("read %d exchanges from the recording, want the 40+ it holds", len(exchanges))
	}
	for _, ex := range exchanges {
		if ex.req == nil {
			continue
		}
		if _, err := mi.Write(pm.apply(ex.req)); err != nil {
			t.Fatal(err)
		}
		if ex.reply == nil {
			// A notification gets no reply: the next request's reply must be the next datagram.
			if _, err := mi.Write([]byte(`{"jsonrpc":"2.0","method":"version","id":"after-notification"}`)); err != nil {
				t.Fatal(err)
			}
			if got := readDatagram(t, mi, 5*time.Second); !bytes.Contains(got, []byte("after-notification")) {
				t.Errorf("%s: notification answered: %s", ex.title, got)
			}
			continue
		}
		got := readDatagram(t, mi, 5*time.Second)
		want := rel.apply(pm.apply(ex.reply))
		if ex.title == "uptime" || ex.title == "get_statistics" || strings.HasPrefix(ex.title, "subscribers_list") {
			got, want = normalize(got), normalize(want)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %s\nwant %s", ex.title, got, want)
		}
	}

	// What the listeners of the recording received (event-01-raise-event-payloads.txt),
	// in any order: MI's raise_event returns "OK" and hands the event to whichever
	// IPC worker is free (SOURCE.md 1.6), so two raises in a row may arrive swapped,
	// and did against a real OpenSIPS.
	wantDgrams := []string{
		`{"jsonrpc":"2.0","method":"E_MY_EVENT","params":["a","b c","3"]}`,
		`{"jsonrpc":"2.0","method":"E_MY_EVENT","params":["x","y"]}`,
		`{"jsonrpc":"2.0","method":"E_MY_EVENT","params":{"k":"v","n":1,"o":"{\"x\":true}","z":"null"}}`,
		`{"jsonrpc":"2.0","method":"E_MY_EVENT"}`,
	}
	want := slices.Sorted(slices.Values(wantDgrams))
	for _, p := range []string{"9001", "9002", "9003", "9004"} {
		var got []string
		for range wantDgrams {
			got = append(got, string(readDatagram(t, udp[p], 5*time.Second)))
		}
		if slices.Sort(got); !slices.Equal(got, want) {
			t.Errorf("udp listener %s:\n got %q\nwant %q", p, got, want)
		}
	}
	for p, ch := range streams {
		want := want
		if p == "9102" {
			want = strings.Split(strings.ReplaceAll(strings.Join(want, "\n"), "E_MY_EVENT", "my_method"), "\n")
			slices.Sort(want)
		}
		got := splitJSON(t, <-ch)
		if slices.Sort(got); !slices.Equal(got, want) {
			t.Errorf("tcp listener %s:\n got %q\nwant %q", p, got, want)
		}
	}
}

// splitJSON cuts event_stream's bytes (JSON objects back to back) into objects.
func splitJSON(t *testing.T, b []byte) []string {
	t.Helper()
	var out []string
	d := json.NewDecoder(bytes.NewReader(b))
	for d.More() {
		var m json.RawMessage
		if err := d.Decode(&m); err != nil {
			t.Fatalf("event_stream bytes %q: %v", b, err)
		}
		out = append(out, string(m))
	}
	return out
}

func TestOpenSIPSDatagramSizeLimit(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{})
	ev := udpListener(t)
	mi, err := net.Dial("udp", o.MIUDP)
	if err != nil {
		t.Fatal(err)
	}
	defer mi.Close()
	call := func(req string) []byte {
		t.Helper()
		if _, err := mi.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		return readDatagram(t, mi, 5*time.Second)
	}
	sock := "udp:" + ev.LocalAddr().String()
	if got := call(`{"jsonrpc":"2.0","method":"event_subscribe","id":1,"params":["E_MY_EVENT","` + sock + `",60]}`); string(got) != `{"jsonrpc":"2.0","result":"OK","id":1}` {
		t.Fatalf("subscribe: %s", got)
	}
	const head = `{"jsonrpc":"2.0","method":"raise_event","id":1,"params":["E_MY_EVENT",["`
	const tail = `"]]}`
	for _, tc := range []struct {
		size  int
		reply string
	}{
		{1000, `{"jsonrpc":"2.0","result":"OK","id":1}`},
		{65457, `{"jsonrpc":"2.0","result":"OK","id":1}`},
		{65458, `400 Parse_error`},
		{65507, `400 Parse_error`},
	} {
		req := head + strings.Repeat("x", tc.size-len(head)-len(tail)) + tail
		if got := call(req); string(got) != tc.reply {
			t.Errorf("request of %d bytes: got %q, want %q", tc.size, got, tc.reply)
			continue
		}
		if tc.reply[0] == '{' {
			if got := readDatagram(t, ev, 5*time.Second); len(got) != tc.size-23 {
				t.Errorf("request of %d bytes: event of %d bytes, want %d", tc.size, len(got), tc.size-23)
			}
		}
	}
}

func TestOpenSIPSUnixDatagram(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{UnixMI: true})
	local := filepath.Join(t.TempDir(), "c.sock")
	// Bound but not connected, as LIVE.md's client: OpenSIPS answers from another
	// socket, and a connected one would refuse that reply.
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: local, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mi := &net.UnixAddr{Name: o.MIUnix, Net: "unixgram"}
	rel := runningRelease(o)
	for _, ex := range readTranscript(t, "mi-04-datagram-unix.txt") {
		if ex.req == nil || ex.reply == nil {
			continue
		}
		if _, err := c.WriteToUnix(ex.req, mi); err != nil {
			t.Fatal(err)
		}
		if got, want := readDatagram(t, c, 5*time.Second), rel.apply(ex.reply); !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %s\nwant %s", ex.title, got, want)
		}
	}
}

// httpExchanges are the mi_http requests of mi-03-http-and-fifo.txt that get a
// complete reply, with the reply minus its Date header.
func httpExchanges(t *testing.T) []exchange {
	t.Helper()
	b, err := os.ReadFile(osipsCaptures + "mi-03-http-and-fifo.txt")
	if err != nil {
		t.Fatal(err)
	}
	var out []exchange
	var cur *exchange
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, "### mi_http: "):
			out = append(out, exchange{title: strings.TrimPrefix(line, "### ")})
			cur = &out[len(out)-1]
		case strings.HasPrefix(line, "### "):
			cur = nil
		case cur != nil && strings.HasPrefix(line, ">>> b"):
			cur.req = pyBytes(t, line[4:])
		case cur != nil && strings.HasPrefix(line, "<<< b"):
			cur.reply = pyBytes(t, line[4:])
		}
	}
	return out
}

var dateHeader = regexp.MustCompile(`Date: [^\r]*\r\n`)

func TestOpenSIPSHTTPReplaysRecording(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{HTTP: true})
	port := strings.TrimPrefix(strings.TrimSuffix(o.HTTPURL, "/mi"), "http://127.0.0.1:")
	rel := runningRelease(o)
	for _, ex := range httpExchanges(t) {
		t.Run(ex.title, func(t *testing.T) {
			req := bytes.ReplaceAll(ex.req, []byte("127.0.0.1:8888"), []byte("127.0.0.1:"+port))
			c, err := net.Dial("tcp", strings.TrimPrefix(strings.TrimSuffix(o.HTTPURL, "/mi"), "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write(req); err != nil {
				t.Fatal(err)
			}
			hangs := bytes.HasSuffix(ex.reply, []byte("<timeout>"))
			want := dateHeader.ReplaceAll(rel.apply(bytes.TrimSuffix(ex.reply, []byte("<timeout>"))), nil)
			if hangs {
				// the head arrives, then nothing: read exactly the head and see the connection stay open
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				r := bufio.NewReader(c)
				var head []byte
				for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
					line, err := r.ReadBytes('\n')
					if err != nil {
						t.Fatalf("head: %v (got %q)", err, head)
					}
					head = append(head, line...)
				}
				if got := dateHeader.ReplaceAll(head, nil); !bytes.Equal(got, want) {
					t.Errorf("\n got %q\nwant %q", got, want)
				}
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if got = dateHeader.ReplaceAll(got, nil); !bytes.Equal(got, want) {
				t.Errorf("\n got %q\nwant %q", got, want)
			}
		})
	}
	// net/http sees a well-formed answer too
	resp, err := http.Post(o.HTTPURL, "application/json", strings.NewReader(`{"jsonrpc":"2.0","method":"version","id":1}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if body, _ := io.ReadAll(resp.Body); string(body) != `{"jsonrpc":"2.0","result":{"Server":"`+o.Version()+`"},"id":1}` {
		t.Errorf("net/http: %s %s", resp.Status, body)
	}
}

// fifoCall writes one line to the MI FIFO and reads the reply FIFO until the
// reply is a whole JSON value or nothing more comes within wait.
func fifoCall(t *testing.T, o *testenv.OpenSIPSServer, name, line string, wait time.Duration) []byte {
	t.Helper()
	path := filepath.Join(o.ReplyDir, name)
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)
	r, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := os.OpenFile(o.FIFO, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteString(line); err != nil {
		t.Fatal(err)
	}
	w.Close()
	_ = r.SetReadDeadline(time.Now().Add(wait))
	var got []byte
	buf := make([]byte, 65536)
	for {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil || (len(got) > 0 && got[len(got)-1] == '}') {
			return got
		}
	}
}

// TestOpenSIPSFIFOReplaysRecording writes the recorded mi_fifo lines and wants the
// recorded replies; the lines that got none must leave the FIFO working.
func TestOpenSIPSFIFOReplaysRecording(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{FIFO: true})
	rel := runningRelease(o)
	b, err := os.ReadFile(osipsCaptures + "mi-03-http-and-fifo.txt")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	replayed := 0
	for i, l := range lines {
		if !strings.HasPrefix(l, ">>> b':") {
			continue
		}
		req := pyBytes(t, l[4:])
		name := strings.SplitN(string(req), ":", 3)[1]
		var want []byte
		if i+1 < len(lines) && strings.HasPrefix(lines[i+1], "<<< b") {
			want = pyBytes(t, lines[i+1][4:])
		}
		if len(want) == 0 || strings.Contains(name, "/") {
			// no reply: write it and go on; the next recorded call shows the FIFO still works
			w, err := os.OpenFile(o.FIFO, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = w.Write(req)
			w.Close()
			// mi_fifo parses what one read(2) returns, and a request it rejects
			// (bad JSON, a reply name with '.' or '/') discards everything after it
			// in that read: give it time to read this one alone.
			time.Sleep(200 * time.Millisecond)
			continue
		}
		want = rel.apply(want)
		if got := fifoCall(t, o, name, string(req), 5*time.Second); !bytes.Equal(got, want) {
			t.Errorf("%s\n got %s\nwant %s", req, got, want)
		}
		replayed++
	}
	if replayed < 2 {
		t.Fatalf("replayed %d recorded FIFO calls", replayed)
	}
	if got := fifoCall(t, o, "last", `:last:{"jsonrpc":"2.0","method":"which","id":3}`+"\n", 5*time.Second); !bytes.HasPrefix(got, []byte(`{"jsonrpc":"2.0","result":["get_statistics"`)) {
		t.Errorf("after the silent ones: %.80s", got)
	}
}

// TestOpenSIPSSubscriptionsAndRestart covers the API later packages build on: Raise
// reaches subscribers, Subscriptions lists them, Restart forgets them.
func TestOpenSIPSSubscriptionsAndRestart(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{Events: []string{"E_SIPSIDE_TEST"}})
	ev := udpListener(t)
	mi, err := net.Dial("udp", o.MIUDP)
	if err != nil {
		t.Fatal(err)
	}
	defer mi.Close()
	sock := "udp:" + ev.LocalAddr().String()
	if _, err := mi.Write([]byte(`{"jsonrpc":"2.0","method":"event_subscribe","id":1,"params":{"event":"E_SIPSIDE_TEST","socket":"` + sock + `","expire":30}}`)); err != nil {
		t.Fatal(err)
	}
	if got := readDatagram(t, mi, 5*time.Second); string(got) != `{"jsonrpc":"2.0","result":"OK","id":1}` {
		t.Fatalf("subscribe: %s", got)
	}
	subs := o.Subscriptions()
	if len(subs) != 1 || subs[0].Event != "E_SIPSIDE_TEST" || subs[0].Socket != sock || subs[0].Expire != 30 || subs[0].TTL < 29 {
		t.Fatalf("subscriptions: %+v", subs)
	}
	if err := o.Raise("E_SIPSIDE_TEST", `{"ip": "10.0.0.1", "n": 2}`); err != nil {
		t.Fatal(err)
	}
	if got := readDatagram(t, ev, 5*time.Second); string(got) != `{"jsonrpc":"2.0","method":"E_SIPSIDE_TEST","params":{"ip":"10.0.0.1","n":2}}` {
		t.Errorf("event: %s", got)
	}
	if err := o.Raise("E_NOT_PUBLISHED", ""); err == nil {
		t.Error("raising an unpublished event worked")
	}
	o.Restart()
	if subs := o.Subscriptions(); len(subs) != 0 {
		t.Errorf("after restart: %+v", subs)
	}
}

func TestOpenSIPSArrayParamsBug(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{ArrayParamsBug: true})
	if o.Real {
		t.Skip("the emulator's reproduction of a 3.6.8 bug")
	}
	ev := udpListener(t)
	mi, err := net.Dial("udp", o.MIUDP)
	if err != nil {
		t.Fatal(err)
	}
	defer mi.Close()
	for _, req := range []string{
		`{"jsonrpc":"2.0","method":"event_subscribe","id":1,"params":["E_MY_EVENT","udp:` + ev.LocalAddr().String() + `"]}`,
		`{"jsonrpc":"2.0","method":"raise_event","id":1,"params":{"event":"E_MY_EVENT","params":"{\"k\":\"v w\",\"n\":1}"}}`,
		`{"jsonrpc":"2.0","method":"raise_event","id":1,"params":["E_MY_EVENT",["a","b"]]}`,
	} {
		if _, err := mi.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		readDatagram(t, mi, 5*time.Second)
	}
	for _, want := range []string{
		`{"jsonrpc":"2.0","method":"E_MY_EVENT","params":{"k":"v w","n":1}}`,
		`{"jsonrpc":"2.0","method":"E_MY_EVENT","params":{"":"a","":"b"}}`,
	} {
		if got := readDatagram(t, ev, 5*time.Second); string(got) != want {
			t.Errorf("\n got %s\nwant %s", got, want)
		}
	}
}

// TestOpenSIPSReliableStream: with reliable_mode each tcp: event carries an id, and a
// reply with that id settles it; Raise reports errors and silence.
func TestOpenSIPSReliableStream(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{StreamReliable: true, StreamTimeout: 300 * time.Millisecond, Events: []string{"E_SIPSIDE_TEST"}})
	if o.Real {
		t.Skip("a real OpenSIPS delivers reliable-mode events asynchronously; Raise cannot see the outcome")
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// the listener answers event n by the n-th reply mode
	modes := []string{"result", "error", "none", "noid"}
	got := make(chan string, len(modes))
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				dec := json.NewDecoder(r)
				for {
					var ev struct {
						ID     int64  `json:"id"`
						Method string `json:"method"`
						Params struct {
							N int `json:"n"`
						} `json:"params"`
					}
					if err := dec.Decode(&ev); err != nil {
						return
					}
					got <- fmt.Sprintf("%s %d id>0:%t", ev.Method, ev.Params.N, ev.ID > 0)
					switch modes[ev.Params.N] {
					case "result":
						fmt.Fprintf(c, `{"jsonrpc":"2.0","result":"ok","id":%d}`, ev.ID)
					case "error":
						fmt.Fprintf(c, `{"jsonrpc":"2.0","error":{"code":-32000,"message":"nope"},"id":%d}`, ev.ID)
					case "noid":
						fmt.Fprint(c, `{"jsonrpc":"2.0","result":"ok"}`)
					}
				}
			}()
		}
	}()
	mi, err := net.Dial("udp", o.MIUDP)
	if err != nil {
		t.Fatal(err)
	}
	defer mi.Close()
	if _, err := mi.Write([]byte(`{"jsonrpc":"2.0","method":"event_subscribe","id":1,"params":["E_SIPSIDE_TEST","tcp:` + l.Addr().String() + `"]}`)); err != nil {
		t.Fatal(err)
	}
	readDatagram(t, mi, 5*time.Second)
	for n, want := range []string{"", "reply is an error", "no reply within 300ms", "without a numeric id"} {
		err := o.Raise("E_SIPSIDE_TEST", fmt.Sprintf(`{"n":%d}`, n))
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("event %d (%s): err = %v, want %q", n, modes[n], err, want)
		}
		if g := <-got; g != fmt.Sprintf("E_SIPSIDE_TEST %d id>0:true", n) {
			t.Errorf("listener got %s", g)
		}
	}
}

// TestOpenSIPSVirtualPolicies: ROUND-ROBIN alternates and loses a dead member's turns;
// FAILOVER moves on from a dead tcp member and skips it for failover_timeout.
func TestOpenSIPSVirtualPolicies(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{FailoverTimeout: time.Hour, Events: []string{"E_RR", "E_FO"}})
	if o.Real {
		t.Skip("the emulator's event_virtual; a real one needs a restart per policy (3.6.8 segfaults freeing udp members)")
	}
	a, b := udpListener(t), udpListener(t)
	dead := func() string { // a tcp port nobody listens on
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}()
	mi, err := net.Dial("udp", o.MIUDP)
	if err != nil {
		t.Fatal(err)
	}
	defer mi.Close()
	for _, sub := range [][2]string{
		{"E_RR", "virtual:ROUND-ROBIN udp:" + a.LocalAddr().String() + " tcp:" + dead + " udp:" + b.LocalAddr().String()},
		{"E_FO", "virtual:FAILOVER tcp:" + dead + " udp:" + b.LocalAddr().String()},
	} {
		if _, err := mi.Write([]byte(`{"jsonrpc":"2.0","method":"event_subscribe","id":1,"params":["` + sub[0] + `","` + sub[1] + `"]}`)); err != nil {
			t.Fatal(err)
		}
		if got := readDatagram(t, mi, 5*time.Second); string(got) != `{"jsonrpc":"2.0","result":"OK","id":1}` {
			t.Fatalf("subscribe %s: %s", sub[1], got)
		}
	}
	// round robin: a, dead (lost), b, a
	for n := range 4 {
		err := o.Raise("E_RR", fmt.Sprintf(`{"n":%d}`, n))
		if (n == 1) != (err != nil) {
			t.Errorf("E_RR %d: err = %v", n, err)
		}
	}
	for _, w := range []struct {
		c *net.UDPConn
		n int
	}{{a, 0}, {b, 2}, {a, 3}} {
		if got, want := string(readDatagram(t, w.c, 5*time.Second)), fmt.Sprintf(`{"jsonrpc":"2.0","method":"E_RR","params":{"n":%d}}`, w.n); got != want {
			t.Errorf("round robin: got %s, want %s", got, want)
		}
	}
	// failover: the dead first member fails once, then is skipped; b gets every event
	for n := range 3 {
		if err := o.Raise("E_FO", fmt.Sprintf(`{"n":%d}`, n)); err != nil {
			t.Errorf("E_FO %d: %v", n, err)
		}
		if got, want := string(readDatagram(t, b, 5*time.Second)), fmt.Sprintf(`{"jsonrpc":"2.0","method":"E_FO","params":{"n":%d}}`, n); got != want {
			t.Errorf("failover: got %s, want %s", got, want)
		}
	}
}

// The statistics commands take their "statistics" as an array, as in 3.6.8
// (statistics.c, get_mi_array_param): a string, an empty array or an object
// item is -32602 Invalid params, nothing found is 404.
func TestOpenSIPSStatisticsArrays(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{})
	c, err := net.Dial("udp", o.MIUDP)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tests := []struct {
		method, params string
		want           []string // parts of the reply
	}{
		{"get_statistics", `[["core:"]]`, []string{`"result":{"core:rcv_requests":0,`, `"core:timestamp":`}},
		{"get_statistics", `{"statistics":["core:","shmem:"]}`, []string{`"core:rcv_requests":0`, `"shmem:total_size":`, `"shmem:free_size":`}},
		{"get_statistics", `[["rcv_requests","fwd_requests"]]`, []string{`"result":{"core:rcv_requests":0,"core:fwd_requests":0}`}},
		{"get_statistics", `[["core:","nope:"]]`, []string{`"core:rcv_requests":0`}},
		{"get_statistics", `["core:"]`, []string{`"error":{"code":-32602,"message":"Invalid params"}`}},
		{"get_statistics", `{"statistics":"core:"}`, []string{`"error":{"code":-32602,"message":"Invalid params"}`}},
		{"get_statistics", `[[]]`, []string{`"error":{"code":-32602,"message":"Invalid params"}`}},
		{"get_statistics", `[[{"a":1}]]`, []string{`"error":{"code":-32602,"message":"Invalid params"}`}},
		{"get_statistics", `[["nope:"]]`, []string{`"error":{"code":404,"message":"Statistics Not Found"}`}},
		{"list_statistics", `[["core:"]]`, []string{`"core:rcv_requests":"incremental"`, `"core:timestamp":"non-incremental"`}},
		{"list_statistics", `["core:"]`, []string{`"error":{"code":-32602,"message":"Invalid params"}`}},
		{"reset_statistics", `[["core:rcv_requests"]]`, []string{`"result":"OK"`}},
		{"reset_statistics", `["core:rcv_requests"]`, []string{`"error":{"code":-32602,"message":"Invalid params"}`}},
	}
	for _, tc := range tests {
		req := `{"jsonrpc":"2.0","method":"` + tc.method + `","id":1,"params":` + tc.params + `}`
		if _, err := c.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		got := readDatagram(t, c, 5*time.Second)
		for _, w := range tc.want {
			if !bytes.Contains(got, []byte(w)) {
				t.Errorf("%s %s:\n got %s\nwant it to contain %s", tc.method, tc.params, got, w)
			}
		}
	}
}
