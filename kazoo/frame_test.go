package kazoo

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/valyala/fastjson"

	"github.com/sipside/sipside/internal/metrics"
)

func TestNetstringReader(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
		err      error
	}{
		{"jsonrpcc capture", `79:{ "id": 2, "jsonrpc": "2.0", "method": "echo", "params": { "a": 1, "b": "x" } },`, []string{`{ "id": 2, "jsonrpc": "2.0", "method": "echo", "params": { "a": 1, "b": "x" } }`}, io.EOF},
		{"back to back", `5:hello,6:world!,`, []string{"hello", "world!"}, io.EOF},
		{"whitespace between", "2:ab,\r\n 1:c,", []string{"ab", "c"}, io.EOF},
		{"empty payload", `0:,`, []string{""}, io.EOF},
		{"truncated length", `5:hello,2`, []string{"hello"}, io.ErrUnexpectedEOF},
		{"truncated payload", `5:hel`, nil, io.ErrUnexpectedEOF},
		{"missing comma", `2:abc`, nil, errBadFrame},
		{"letters", `{"cmd":"ping"}`, nil, errBadFrame},
		{"leading zero", `05:hello,`, nil, errBadFrame},
		{"no length", `:ab,`, nil, errBadFrame},
		{"too big", `99999999999:x`, nil, errFrameTooBig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &netstringReader{r: bufio.NewReader(strings.NewReader(tc.in)), max: 1 << 20}
			var got []string
			var err error
			for {
				var p []byte
				if p, err = r.Next(nil); err != nil {
					break
				}
				got = append(got, string(p))
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestScanJSON(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		err  bool
	}{
		{`{"id":1}`, 8, false},
		{`  {"a":"}"}{"b":2}`, 11, false},
		{`{"a":"\"}"}`, 11, false},
		{`{"a":[1,{"b":2}]`, 0, false},
		{`{"id":347939454,"jsonrpc":"2.0"`, 0, false},
		{``, 0, false},
		{"  \n", 0, false},
		{`[1]`, 3, false},
		{`not json`, 0, true},
		{`"str"`, 0, true},
		{strings.Repeat("[", 65), 0, true},
	} {
		n, err := scanJSON([]byte(tc.in))
		if n != tc.want || (err != nil) != tc.err {
			t.Errorf("scanJSON(%q) = %d, %v; want %d, err %v", tc.in, n, err, tc.want, tc.err)
		}
	}
}

func FuzzNetstring(f *testing.F) {
	for _, s := range []string{`79:{ "id": 2, "jsonrpc": "2.0", "method": "echo", "params": { "a": 1, "b": "x" } },`, `5:hello,6:world!,2`, `:ab,`, `0:,`, "\n3:abc,", `12x`, `999999999999:`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 4096
		r := &netstringReader{r: bufio.NewReader(bytes.NewReader(in)), max: max}
		var out []byte
		for {
			p, err := r.Next(nil)
			if err != nil {
				break
			}
			if len(p) > max {
				t.Fatalf("payload of %d bytes above max %d", len(p), max)
			}
			out = appendNetstring(out, p)
		}
		// What was read re-frames to something that reads back the same.
		r2 := &netstringReader{r: bufio.NewReader(bytes.NewReader(out)), max: max}
		var again []byte
		for {
			p, err := r2.Next(nil)
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("re-read: %v", err)
				}
				break
			}
			again = appendNetstring(again, p)
		}
		if !bytes.Equal(out, again) {
			t.Fatalf("round trip differs: %q vs %q", out, again)
		}
	})
}

func FuzzScanJSON(f *testing.F) {
	for _, s := range []string{`{"id":347939454,"jsonrpc":"2.0","method":"lab.add","params":[1,2]}`, `{"a":"\"}"}`, `{"id":null}{"id":1}`, `[`, `x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		n, err := scanJSON(in)
		if err != nil {
			return
		}
		if n < 0 || n > len(in) {
			t.Fatalf("n = %d for %d bytes", n, len(in))
		}
		// A complete valid value must be found in full: the scanner may not stop early.
		if n > 0 {
			if v := bytes.TrimSpace(in[:n]); fastjson.ValidateBytes(in) == nil && !bytes.Equal(v, bytes.TrimSpace(in)) {
				t.Fatalf("valid %q cut at %d", in, n)
			}
		} else if fastjson.ValidateBytes(in) == nil && len(bytes.TrimSpace(in)) > 0 && (bytes.TrimSpace(in)[0] == '{' || bytes.TrimSpace(in)[0] == '[') {
			t.Fatalf("complete value %q not found", in)
		}
	})
}

// FuzzDispatch throws arbitrary request bytes at the JSON-RPC dispatcher of a bridge
// that is not connected: every request gets a well-formed response or none.
func FuzzDispatch(f *testing.F) {
	for _, s := range []string{
		`{"id":1,"jsonrpc":"2.0","method":"sipside.ping"}`,
		`{"id":"a","jsonrpc":"2.0","method":"amqp.ack","params":{"id":"1-1-1"}}`,
		`{"id":null,"jsonrpc":"2.0","method":"amqp.publish","params":{"routing_key":"k","payload":{}}}`,
		`{"id":2,"method":"amqp.query","params":{"routing_key":"k","payload":"x","timeout_ms":1,"headers":{"a":[1]}}}`,
		`[]`, `{`, `{"id":{},"method":"x"}`,
	} {
		f.Add([]byte(s))
	}
	cfg := Config{}
	cfg.AMQP.Brokers = []string{"amqp://guest:guest@127.0.0.1:1/"}
	b, err := New(cfg, Options{Logger: quiet, Metrics: metrics.New()})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 0)
		defer cancel()
		resp := b.disp.handle(ctx, ListenTCP, in)
		if resp == nil {
			return
		}
		v, err := fastjson.ParseBytes(resp)
		if err != nil {
			t.Fatalf("response %q is not JSON: %v", resp, err)
		}
		if (v.Get("result") == nil) == (v.Get("error") == nil) || v.Get("id") == nil {
			t.Fatalf("response %s: want exactly one of result and error, and an id", resp)
		}
	})
}
