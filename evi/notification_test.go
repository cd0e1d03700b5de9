package evi

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
)

// recordedDatagrams reads the event datagrams recorded from a real OpenSIPS.
func recordedDatagrams(t testing.TB) [][]byte {
	t.Helper()
	f, err := os.Open("testdata/opensips-event-datagrams.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		_, h, _ := strings.Cut(line, " ")
		b, err := hex.DecodeString(h)
		if err != nil {
			t.Fatalf("testdata: %v", err)
		}
		out = append(out, b)
	}
	if len(out) < 10 {
		t.Fatalf("testdata: only %d datagrams", len(out))
	}
	return out
}

func TestParseDatagramRecorded(t *testing.T) {
	for _, b := range recordedDatagrams(t) {
		n, err := ParseDatagram(b)
		if err != nil {
			t.Errorf("%s: %v", b, err)
			continue
		}
		name, _ := n.Name()
		if !strings.HasPrefix(name, "E_") {
			t.Errorf("%s: name %q", b, name)
		}
		// params must be the exact bytes between "params": and the final }.
		if i := bytes.Index(b, []byte(`"params":`)); i >= 0 {
			want := b[i+len(`"params":`) : len(b)-1]
			if !bytes.Equal(n.Params, want) {
				t.Errorf("params = %s, want %s", n.Params, want)
			}
		} else if n.Params != nil {
			t.Errorf("%s: params %s from nowhere", b, n.Params)
		}
	}
}

func TestParseDatagram(t *testing.T) {
	tests := []struct {
		name, in   string
		event      string
		params, id string
		err        string
	}{
		{name: "no params", in: `{"jsonrpc":"2.0","method":"E_MY_EVENT"}`, event: "E_MY_EVENT"},
		{name: "array", in: `{"jsonrpc":"2.0","method":"E","params":["a","b c","3"]}`, event: "E", params: `["a","b c","3"]`},
		{name: "duplicate empty keys kept", in: `{"jsonrpc":"2.0","method":"E","params":{"":"a","":"b"}}`, event: "E", params: `{"":"a","":"b"}`},
		{name: "whitespace and newline", in: " {\"method\" : \"E\" ,\n \"params\" : { \"a\" : [1, 2.5e3, -0.1] } }\n", event: "E", params: `{ "a" : [1, 2.5e3, -0.1] }`},
		{name: "reliable mode id first", in: `{"id":1234,"jsonrpc":"2.0","method":"E","params":{}}`, event: "E", params: `{}`, id: "1234"},
		{name: "escaped name", in: `{"method":"E_\u0041"}`, event: "E_A"},
		{name: "invalid utf8 in params kept", in: "{\"method\":\"E\",\"params\":[\"\xff\xfe\"]}", event: "E", params: "[\"\xff\xfe\"]"},
		{name: "empty", in: "", err: "empty datagram"},
		{name: "not json", in: "hello", err: "not JSON-RPC"},
		{name: "array top", in: `[{"method":"E"}]`, err: "want '{'"},
		{name: "no method", in: `{"jsonrpc":"2.0","params":[]}`, err: `no "method"`},
		{name: "empty method", in: `{"method":""}`, err: "empty"},
		{name: "method number", in: `{"method":5}`, err: "want a string"},
		{name: "scalar params", in: `{"method":"E","params":"x"}`, err: "want an object or an array"},
		{name: "truncated", in: `{"jsonrpc":"2.0","method":"E","params":{"a":"b`, err: "truncated"},
		{name: "truncated number", in: `{"method":"E","params":[12`, err: "truncated"},
		{name: "trailing garbage", in: `{"method":"E"}xyz`, err: "trailing"},
		{name: "two objects", in: `{"method":"E"}{"method":"F"}`, err: "trailing"},
		{name: "bad version", in: `{"jsonrpc":"1.0","method":"E"}`, err: `want "2.0"`},
		{name: "bad escape", in: `{"method":"E\q"}`, err: "bad escape"},
		{name: "control char", in: "{\"method\":\"E\x01\"}", err: "control character"},
		{name: "bad literal", in: `{"method":"E","params":[tru]}`, err: "literal"},
		{name: "missing colon", in: `{"method" "E"}`, err: "want ':'"},
		{name: "leading zero", in: `{"method":"E","params":[01]}`, err: "want ','"},
		{name: "duplicate method", in: `{"method":"E","method":"F"}`, err: "duplicate"},
		{name: "too deep", in: `{"method":"E","params":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`, err: "nested deeper"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := ParseDatagram([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			name, err := n.Name()
			if err != nil || name != tt.event {
				t.Errorf("name = %q, %v; want %q", name, err, tt.event)
			}
			if string(n.Params) != tt.params {
				t.Errorf("params = %q, want %q", n.Params, tt.params)
			}
			if string(n.ID) != tt.id {
				t.Errorf("id = %q, want %q", n.ID, tt.id)
			}
		})
	}
}

// A stream reader feeds the parser whatever bytes it has: every proper
// prefix of a notification must be reported incomplete, never an error.
func TestParseNotificationPrefixes(t *testing.T) {
	for _, b := range recordedDatagrams(t) {
		for i := 0; i < len(b); i++ {
			_, _, err := ParseNotification(b[:i])
			if !errors.Is(err, ErrIncomplete) {
				t.Fatalf("prefix %q: err = %v, want ErrIncomplete", b[:i], err)
			}
		}
		_, n, err := ParseNotification(b)
		if err != nil || n != len(b) {
			t.Fatalf("%s: n=%d err=%v", b, n, err)
		}
	}
}

func FuzzParseDatagram(f *testing.F) {
	for _, b := range recordedDatagrams(f) {
		f.Add(b)
	}
	f.Add([]byte(`{"method":"E","params":{"":"a","":"b"}}`))
	f.Add([]byte(`{"id":1,"method":"E","params":[1e5,-0.5,true,null,{"a":[]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := ParseDatagram(b)
		if err != nil {
			return
		}
		// Whatever we accept, a standard JSON parser must accept too.
		if !json.Valid(b) {
			t.Fatalf("accepted invalid JSON %q", b)
		}
		if n.Params != nil && !json.Valid(n.Params) {
			t.Fatalf("params %q not valid JSON", n.Params)
		}
		if _, err := n.Name(); err != nil {
			t.Fatalf("accepted a method whose name does not decode: %v", err)
		}
	})
}
