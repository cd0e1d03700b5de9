package kazoo

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/valyala/fastjson"

	"github.com/sipside/sipside/internal/metrics"
)

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
