package mi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/metrics"
	"github.com/valyala/fastjson"
)

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in      string
		want    Target
		wantErr string
	}{
		{in: "opensips:udp:127.0.0.1:8080", want: Target{OpenSIPS, UDP, "127.0.0.1:8080"}},
		{in: "opensips:udp:[::1]:8080", want: Target{OpenSIPS, UDP, "[::1]:8080"}},
		{in: "kamailio:udp:localhost:8090", want: Target{Kamailio, UDP, "localhost:8090"}},
		{in: "opensips:unix:/run/opensips/mi.sock", want: Target{OpenSIPS, Unix, "/run/opensips/mi.sock"}},
		{in: "opensips:fifo:/tmp/opensips_fifo", want: Target{OpenSIPS, FIFO, "/tmp/opensips_fifo"}},
		{in: "kamailio:fifo:/run/kamailio/kamailio_rpc.fifo", want: Target{Kamailio, FIFO, "/run/kamailio/kamailio_rpc.fifo"}},
		{in: "opensips:http://127.0.0.1:8888/mi", want: Target{OpenSIPS, HTTP, "http://127.0.0.1:8888/mi"}},
		{in: "opensips:http://127.0.0.1:8888", want: Target{OpenSIPS, HTTP, "http://127.0.0.1:8888/mi"}},
		{in: "kamailio:http://127.0.0.1:5071/", want: Target{Kamailio, HTTP, "http://127.0.0.1:5071/RPC"}},
		{in: "kamailio:https://proxy.example:5071/RPC", want: Target{Kamailio, HTTP, "https://proxy.example:5071/RPC"}},
		{in: "OpenSIPS:UDP:127.0.0.1:8080", want: Target{OpenSIPS, UDP, "127.0.0.1:8080"}},
		{in: "", wantErr: "want opensips:udp:HOST:PORT"},
		{in: "udp:127.0.0.1:8080", wantErr: `unknown proxy "udp"`},
		{in: "freeswitch:udp:127.0.0.1:8080", wantErr: `unknown proxy "freeswitch"`},
		{in: "opensips", wantErr: "want opensips:udp:HOST:PORT"},
		{in: "opensips:udp", wantErr: "no transport"},
		{in: "opensips:udp:127.0.0.1", wantErr: "udp wants HOST:PORT"},
		{in: "opensips:udp:127.0.0.1:http8080x", wantErr: "bad port"},
		{in: "opensips:tcp:127.0.0.1:8080", wantErr: `unknown transport "tcp"`},
		{in: "opensips:fifo:", wantErr: "fifo wants a path"},
		{in: "kamailio:http://", wantErr: "want a URL"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseTarget(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			if again, err := ParseTarget(got.String()); err != nil || again != got {
				t.Errorf("String() %q does not parse back: %+v, %v", got.String(), again, err)
			}
		})
	}
}

func TestEncodeRequest(t *testing.T) {
	tests := []struct {
		name   string
		d      Dialect
		params any
		want   string
	}{
		{"opensips none", OpenSIPS, nil, `{"jsonrpc":"2.0","method":"m","id":7}`},
		{"opensips list", OpenSIPS, []any{"E_X", "udp:127.0.0.1:9", 120}, `{"jsonrpc":"2.0","method":"m","params":["E_X","udp:127.0.0.1:9",120],"id":7}`},
		{"opensips named order kept", OpenSIPS, Named{{"event", "E"}, {"socket", "s"}, {"expire", 1}}, `{"jsonrpc":"2.0","method":"m","params":{"event":"E","socket":"s","expire":1},"id":7}`},
		{"opensips map", OpenSIPS, map[string]any{"b": 1, "a": "<&>"}, `{"jsonrpc":"2.0","method":"m","params":{"a":"<&>","b":1},"id":7}`},
		{"opensips raw", OpenSIPS, json.RawMessage(` [ 1 , "a b" ] `), `{"jsonrpc":"2.0","method":"m","params":[1,"a b"],"id":7}`},
		{"kamailio none", Kamailio, nil, `{"jsonrpc": "2.0", "method": "m", "id": 7}`},
		{"kamailio list", Kamailio, []string{"t", "k, v: w"}, `{"jsonrpc": "2.0", "method": "m", "params": ["t", "k, v: w"], "id": 7}`},
		{"kamailio named", Kamailio, Named{{"htable", "t"}, {"key", "a\"b"}}, `{"jsonrpc": "2.0", "method": "m", "params": {"htable": "t", "key": "a\"b"}, "id": 7}`},
		{"kamailio one-key map", Kamailio, map[string]string{"htable": "t"}, `{"jsonrpc": "2.0", "method": "m", "params": {"htable": "t"}, "id": 7}`},
		{"empty list", OpenSIPS, []any{}, `{"jsonrpc":"2.0","method":"m","params":[],"id":7}`},
		{"nil slice", OpenSIPS, []any(nil), `{"jsonrpc":"2.0","method":"m","id":7}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := encodeParams(tc.d, tc.params)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(encodeRequest(tc.d, "m", p, 7, "")); got != tc.want {
				t.Errorf("\n got %s\nwant %s", got, tc.want)
			}
		})
	}
	for _, bad := range []struct {
		d      Dialect
		params any
		want   string
	}{
		{OpenSIPS, "x", "params must be nil, a list or named values"},
		{OpenSIPS, 5, "params must be nil"},
		{OpenSIPS, json.RawMessage(`"x"`), "must be a JSON array or object"},
		{OpenSIPS, json.RawMessage(`[1,`), "not valid JSON"},
		{Kamailio, map[string]any{"a": 1, "b": 2}, "kamailio takes parameters by position"},
	} {
		if _, err := encodeParams(bad.d, bad.params); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("encodeParams(%s, %#v) = %v, want %q", bad.d, bad.params, err, bad.want)
		}
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		in      string
		result  string
		err     *Error
		wantErr bool
	}{
		{in: `{"jsonrpc":"2.0","result":{"Server":"OpenSIPS (3.6.8 (x86_64/linux))"},"id":1}`, result: `{"Server":"OpenSIPS (3.6.8 (x86_64/linux))"}`},
		{in: `{"jsonrpc":"2.0","result":"kamailio 5.6.3 (x86_64/linux) "}`, result: `"kamailio 5.6.3 (x86_64/linux) "`},
		{in: `{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params","data":"Too few or too many parameters"},"id":1}`, err: &Error{Code: -32602, Message: "Invalid params", Data: "Too few or too many parameters"}},
		{in: `{"jsonrpc":"2.0","error":{"code":500,"message":"Method Not Found"},"id":10}`, err: &Error{Code: 500, Message: "Method Not Found"}},
		{in: `{"jsonrpc":"2.0","error":{"code":1,"message":"m","data":{"x":[1]}},"id":1}`, err: &Error{Code: 1, Message: "m", Data: `{"x":[1]}`}},
		{in: `400 Parse_error`, err: &Error{Code: 400, Message: "Parse_error"}},
		{in: `500 Internal error`, err: &Error{Code: 500, Message: "Internal error"}},
		{in: `{"jsonrpc":"2.0","result":{},"id":1}` + "\n", result: `{}`},
		{in: `{"jsonrpc":"2.0","result":{"":"a","":"b"},"id":1}`, result: `{"":"a","":"b"}`},
		{in: ``, wantErr: true},
		{in: `hello`, wantErr: true},
		{in: `{"jsonrpc":"2.0","id":1}`, wantErr: true},
		{in: `{"jsonrpc":"2.0","result":`, wantErr: true},
		{in: `[1,2]`, wantErr: true},
	}
	for _, tc := range tests {
		r, err := parseReply([]byte(tc.in))
		if tc.wantErr {
			if err == nil {
				t.Errorf("%q: no error", tc.in)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if tc.err != nil {
			if r.err == nil || *r.err != *tc.err {
				t.Errorf("%q: error %+v, want %+v", tc.in, r.err, tc.err)
			}
			continue
		}
		if string(r.result) != tc.result {
			t.Errorf("%q: result %s, want %s", tc.in, r.result, tc.result)
		}
	}
}

func newClient(t *testing.T, target string, o Options) *Client {
	t.Helper()
	c, err := New(target, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestFakeTransports runs calls of every kind over every transport of both dialects.
func TestFakeTransports(t *testing.T) {
	for _, d := range []Dialect{OpenSIPS, Kamailio} {
		for _, tr := range []string{"udp", "unix", "http", "fifo"} {
			t.Run(string(d)+"/"+tr, func(t *testing.T) {
				f := newFake(t, d, tr)
				c := newClient(t, f.target, Options{})
				ctx := context.Background()
				for _, tc := range []struct {
					params any
					want   string
				}{
					{nil, `"OK"`},
					{[]any{"a", 1}, `["a",1]`},
					{Named{{"event", "E"}, {"expire", 3}}, `{"event":"E","expire":3}`},
				} {
					r, err := c.Call(ctx, "m", tc.params)
					if err != nil {
						t.Fatalf("%v: %v", tc.params, err)
					}
					if r.String() != tc.want {
						t.Errorf("%v: result %s, want %s", tc.params, r, tc.want)
					}
				}
				f.setReply(func(req []byte) [][]byte {
					id := fastjson.MustParseBytes(req).Get("id").MarshalTo(nil)
					return [][]byte{fmt.Appendf(nil, `{"jsonrpc":"2.0","error":{"code":404,"message":"Event not registered"},"id":%s}`, id)}
				})
				_, err := c.Call(ctx, "raise_event", []any{"E_NOPE"})
				var me *Error
				if !errors.As(err, &me) || me.Code != 404 || me.Message != "Event not registered" || me.Method != "raise_event" {
					t.Fatalf("error = %#v, want *Error 404", err)
				}
				if got := err.Error(); got != "raise_event: 404 Event not registered" {
					t.Errorf("Error() = %q", got)
				}
			})
		}
	}
}

// TestDatagramMatchesRepliesByID has many callers share one socket while the
// proxy answers out of order, with strays and garbage in between.
func TestDatagramMatchesRepliesByID(t *testing.T) {
	// Each caller has one call in flight, so a batch of replies is one per caller.
	const callers, calls = 8, 25
	f := newFake(t, Kamailio, "udp")
	var mu sync.Mutex
	var held [][]byte
	f.setReply(func(req []byte) [][]byte {
		mu.Lock()
		defer mu.Unlock()
		held = append(held, echoReply(req))
		if len(held) < callers {
			return nil
		}
		// release the batch in reverse order, with a reply for nobody and a broken one
		out := [][]byte{[]byte(`{"jsonrpc":"2.0","result":"stray","id":2000000000}`), []byte("{garbage")}
		for i := len(held) - 1; i >= 0; i-- {
			out = append(out, held[i])
		}
		held = nil
		return out
	})
	reg := metrics.New()
	c := newClient(t, f.target, Options{Metrics: reg, Timeout: 10 * time.Second})
	var wg sync.WaitGroup
	errs := make(chan error, callers*calls)
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range calls {
				want := fmt.Sprintf(`["g%d-%d"]`, g, i)
				r, err := c.Call(context.Background(), "core.echo", []string{fmt.Sprintf("g%d-%d", g, i)})
				if err != nil {
					errs <- err
					return
				}
				if r.String() != want {
					errs <- fmt.Errorf("got %s, want %s", r, want)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	drops := reg.Counter("sipside_mi_replies_dropped_total", "", "target", "reason")
	if n := drops.With(c.name, "unknown_id").Value(); n != calls {
		t.Errorf("unknown_id drops = %d, want %d", n, calls)
	}
	if n := drops.With(c.name, "malformed").Value(); n != calls {
		t.Errorf("malformed drops = %d, want %d", n, calls)
	}
	ok := reg.Counter("sipside_mi_calls_total", "", "target", "method", "outcome").With(c.name, "core.echo", "ok").Value()
	if ok != callers*calls {
		t.Errorf("ok calls = %d, want %d", ok, callers*calls)
	}
}

func TestDatagramLateReplyIsDropped(t *testing.T) {
	f := newFake(t, OpenSIPS, "udp")
	late := make(chan []byte, 1)
	f.setReply(func(req []byte) [][]byte {
		late <- echoReply(req)
		return nil
	})
	reg := metrics.New()
	c := newClient(t, f.target, Options{Metrics: reg})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Call(ctx, "version", nil)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !regexp.MustCompile(`^no reply from `+regexp.QuoteMeta(f.target)+` within \d+ms: is OpenSIPS running with mi_datagram`).MatchString(err.Error()) {
		t.Fatalf("err = %v", err)
	}
	var me *Error
	if errors.As(err, &me) {
		t.Fatal("a timeout is not a JSON-RPC error")
	}
	// the proxy answers at last: nobody waits for that id any more
	f.setReply(nil)
	body := <-late
	c.tr.(*dgram).dispatch(new(fastjson.Parser), body)
	drops := reg.Counter("sipside_mi_replies_dropped_total", "", "target", "reason").With(c.name, "unknown_id")
	waitFor(t, "the late reply to be counted", func() bool { return drops.Value() == 1 })
	if r, err := c.Call(context.Background(), "version", nil); err != nil || r.String() != `"OK"` {
		t.Fatalf("next call: %v %v", r, err)
	}
	timeouts := reg.Counter("sipside_mi_calls_total", "", "target", "method", "outcome").With(c.name, "version", "timeout").Value()
	if timeouts != 1 {
		t.Errorf("timeouts = %d", timeouts)
	}
}

// TestDatagramBareTextReply: mi_datagram's "500 Internal error" (reply too big) has
// no id and goes to the only waiting call.
func TestDatagramBareTextReply(t *testing.T) {
	f := newFake(t, OpenSIPS, "udp")
	f.setReply(func([]byte) [][]byte { return [][]byte{[]byte("500 Internal error")} })
	c := newClient(t, f.target, Options{})
	_, err := c.Call(context.Background(), "ul_dump", nil)
	var me *Error
	if !errors.As(err, &me) || me.Code != 500 || !strings.Contains(err.Error(), "use opensips:http or opensips:fifo") {
		t.Fatalf("err = %v", err)
	}
}

func TestTransportErrorsSayWhatToCheck(t *testing.T) {
	dir := t.TempDir()
	udpPort := func() string {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}()
	tcpAddr := func() string {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}()
	noReader := filepath.Join(dir, "noreader")
	if err := syscall.Mkfifo(noReader, 0o600); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		target string
		want   string
	}{
		{"opensips:udp:" + udpPort, "connection refused by " + udpPort + ": is the proxy running"},
		{"kamailio:unix:" + filepath.Join(dir, "nope.sock"), "nothing listens on " + filepath.Join(dir, "nope.sock")},
		{"kamailio:http://" + tcpAddr + "/RPC", "connection refused by " + tcpAddr + ": is the proxy's HTTP server listening there?"},
		{"opensips:fifo:" + filepath.Join(dir, "missing"), "no FIFO at " + filepath.Join(dir, "missing") + ": check mi_fifo's fifo_name"},
		{"opensips:fifo:" + noReader, "no process reads the FIFO " + noReader + ": is the proxy running?"},
	}
	for _, tc := range tests {
		t.Run(tc.target, func(t *testing.T) {
			c := newClient(t, tc.target, Options{Timeout: 3 * time.Second})
			start := time.Now()
			_, err := c.Call(context.Background(), "version", nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if time.Since(start) > 2*time.Second {
				t.Errorf("took %s: the failure should be immediate, not a timeout", time.Since(start))
			}
		})
	}
}

// TestHTTPReusesAndRedials: Kamailio keeps connections open; when one was closed
// while idle, the call goes out again on a new connection.
func TestHTTPReusesAndRedials(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var mu sync.Mutex
	conns := 0
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns++
			n := conns
			mu.Unlock()
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for i := 0; ; i++ {
					m, err := c.Read(buf)
					if err != nil {
						return
					}
					req := buf[:m]
					body := req[strings.Index(string(req), "\r\n\r\n")+4:]
					reply := echoReply(body)
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nSia: SIP/2.0/TCP 127.0.0.1:1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(reply), reply)
					if n == 1 && i == 1 {
						return // the first connection dies after two calls, while idle
					}
				}
			}()
		}
	}()
	c := newClient(t, "kamailio:http://"+l.Addr().String()+"/RPC", Options{})
	for i := range 5 {
		if r, err := c.Call(context.Background(), "core.echo", []int{i}); err != nil || r.String() != fmt.Sprintf("[%d]", i) {
			t.Fatalf("call %d: %v %v", i, r, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if conns != 2 {
		t.Errorf("%d connections for 5 sequential calls, want 2 (reuse, one redial)", conns)
	}
}

func TestResultAccess(t *testing.T) {
	r := NewResult([]byte(`{"Events":[{"name":"E_MY_EVENT","id":14}]}`))
	v, err := r.Value()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(v.GetStringBytes("Events", "0", "name")); got != "E_MY_EVENT" {
		t.Errorf("name = %q", got)
	}
	var dec struct{ Events []struct{ Name string } }
	if err := r.Decode(&dec); err != nil || dec.Events[0].Name != "E_MY_EVENT" {
		t.Errorf("Decode: %+v %v", dec, err)
	}
	if got := string(r.Indent()); !strings.Contains(got, "\n  \"Events\": [\n") {
		t.Errorf("Indent: %s", got)
	}
	if s, err := NewResult([]byte(`"OK"`)).Text(); err != nil || s != "OK" {
		t.Errorf("Text: %q %v", s, err)
	}
	if _, err := r.Text(); err == nil {
		t.Error("Text of an object worked")
	}
}

func TestRequestTooBigForADatagram(t *testing.T) {
	f := newFake(t, OpenSIPS, "udp")
	c := newClient(t, f.target, Options{})
	_, err := c.Call(context.Background(), "raise_event", []any{"E_MY_EVENT", []string{strings.Repeat("x", 65457)}})
	if err == nil || !strings.Contains(err.Error(), "over the 65457 a opensips datagram takes: use http or fifo") {
		t.Fatalf("err = %v", err)
	}
}

func TestCloseFailsCallsInFlight(t *testing.T) {
	f := newFake(t, OpenSIPS, "udp")
	f.setReply(func([]byte) [][]byte { return nil })
	c, err := New(f.target, Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.Call(context.Background(), "version", nil)
		done <- err
	}()
	f.next()
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("err = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("call still waiting after Close")
	}
	if _, err := c.Call(context.Background(), "version", nil); !errors.Is(err, net.ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

func TestUnixDatagramTruncatedReply(t *testing.T) {
	f := newFake(t, Kamailio, "unix")
	big := `{"jsonrpc":"2.0","result":"` + strings.Repeat("x", 4000) + `","id":1}`
	f.setReply(func([]byte) [][]byte { return [][]byte{[]byte(big)} })
	reg := metrics.New()
	c := newClient(t, f.target, Options{Metrics: reg, SocketDir: t.TempDir()})
	c.tr.(*dgram).readBuf = 1024
	_, err := c.Call(context.Background(), "core.psx", nil)
	if err == nil || !strings.Contains(err.Error(), "reply over 1024 bytes was truncated") {
		t.Fatalf("err = %v", err)
	}
	if n := reg.Counter("sipside_mi_replies_dropped_total", "", "target", "reason").With(c.name, "truncated").Value(); n != 1 {
		t.Errorf("truncated drops = %d", n)
	}
}

func TestCallCancelled(t *testing.T) {
	f := newFake(t, OpenSIPS, "udp")
	f.setReply(func([]byte) [][]byte { return nil })
	c := newClient(t, f.target, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		f.next()
		cancel()
	}()
	_, err := c.Call(ctx, "version", nil)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "call cancelled after") {
		t.Fatalf("err = %v", err)
	}
}

func TestMetricsExposed(t *testing.T) {
	f := newFake(t, OpenSIPS, "udp")
	reg := metrics.New()
	c := newClient(t, f.target, Options{Metrics: reg})
	if _, err := c.Call(context.Background(), "version", nil); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if _, err := reg.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`sipside_mi_calls_total{target="` + f.target + `",method="version",outcome="ok"} 1`,
		`sipside_mi_call_duration_seconds_count{target="` + f.target + `",method="version"} 1`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestHTTPWrongPath: a URL that is not the MI root gets a clear error, not a parse failure.
func TestHTTPWrongPath(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 4096)
			_, _ = c.Read(buf)
			fmt.Fprint(c, "HTTP/1.1 404 Not Found\r\nSia: SIP/2.0/TCP 127.0.0.1:1\r\nContent-Type: text/plain\r\nServer: kamailio (5.6.3 (x86_64/linux))\r\nContent-Length: 17\r\n\r\nwrong url /other\n")
			c.Close()
		}
	}()
	c := newClient(t, "kamailio:http://"+l.Addr().String()+"/other", Options{})
	_, err = c.Call(context.Background(), "core.version", nil)
	if err == nil || !strings.Contains(err.Error(), "HTTP 404 Not Found from "+l.Addr().String()+": is /other the MI path?") {
		t.Fatalf("err = %v", err)
	}
}

// TestFIFOReplyDir: without --reply-dir the reply reaches us whether the proxy's
// reply directory is beside its FIFO or the modules' default /tmp; with one, only there.
func TestFIFOReplyDir(t *testing.T) {
	for _, d := range []Dialect{OpenSIPS, Kamailio} {
		t.Run(string(d), func(t *testing.T) {
			f := newFake(t, d, "fifo")
			f.mu.Lock()
			f.fifoReplyDir = "/tmp"
			f.mu.Unlock()
			c := newClient(t, f.target, Options{})
			if r, err := c.Call(context.Background(), "version", nil); err != nil || r.String() != `"OK"` {
				t.Fatalf("reply in /tmp: %v %v", r, err)
			}
			other := t.TempDir()
			f.mu.Lock()
			f.fifoReplyDir = other
			f.mu.Unlock()
			c2 := newClient(t, f.target, Options{ReplyDir: other})
			if r, err := c2.Call(context.Background(), "version", nil); err != nil || r.String() != `"OK"` {
				t.Fatalf("reply in --reply-dir: %v %v", r, err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			if _, err := c.Call(ctx, "version", nil); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "reply_dir") {
				t.Fatalf("reply in a directory we do not watch: %v", err)
			}
			entries, _ := filepath.Glob("/tmp/sipside_reply_*")
			for _, e := range entries {
				if strings.Contains(e, fmt.Sprintf("sipside_reply_%d_", os.Getpid())) {
					t.Errorf("reply FIFO %s left behind", e)
				}
			}
		})
	}
}
