package netstring

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReader(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		err  error
	}{
		// Frames as Kamailio's evapi sent them (captures/evapi-tcp8448.txt).
		{in: `16:{"event":"pong"},39:{"event":"test","data":{"fU":"tester"}},`, want: []string{`{"event":"pong"}`, `{"event":"test","data":{"fU":"tester"}}`}, err: io.EOF},
		{in: "5:hello,\n6:world!, 0:,", want: []string{"hello", "world!", ""}, err: io.EOF},
		{in: "", err: io.EOF},
		{in: "5:hel", err: io.ErrUnexpectedEOF},
		{in: "12", err: io.ErrUnexpectedEOF},
		{in: `{"cmd":"ping"}`, err: ErrMalformed},
		{in: "5:hello;", err: ErrMalformed},
		{in: ":x,", err: ErrMalformed},
		{in: "01:x,", err: ErrMalformed},
		{in: "99999:x", err: ErrTooBig},
	}
	for _, tt := range tests {
		r := NewReader(strings.NewReader(tt.in), 1024)
		var got []string
		var err error
		for {
			var p []byte
			if p, err = r.Next(); err != nil {
				break
			}
			got = append(got, string(p))
		}
		if !errors.Is(err, tt.err) || strings.Join(got, "|") != strings.Join(tt.want, "|") {
			t.Errorf("%q: got %q, %v; want %q, %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestAppendRoundTrip(t *testing.T) {
	var b []byte
	for _, p := range []string{"", "a", `{"cmd":"ping"}`, strings.Repeat("x", 1000)} {
		b = Append(b, []byte(p))
	}
	r := NewReader(bytes.NewReader(b), 4096)
	for _, want := range []string{"", "a", `{"cmd":"ping"}`, strings.Repeat("x", 1000)} {
		got, err := r.Next()
		if err != nil || string(got) != want {
			t.Fatalf("got %q, %v", got, err)
		}
	}
}

func FuzzReader(f *testing.F) {
	f.Add([]byte(`16:{"event":"pong"},`))
	f.Add([]byte("5:hello,6:world!,2"))
	f.Add([]byte("0:,"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in), 1<<16)
		var out []byte
		for {
			p, err := r.Next()
			if err != nil {
				break
			}
			out = Append(out, p)
		}
		// Whatever was read re-encodes to frames that read back the same.
		r2 := NewReader(bytes.NewReader(out), 1<<16)
		var again []byte
		for {
			p, err := r2.Next()
			if err != nil {
				if err != io.EOF {
					t.Fatalf("re-read: %v", err)
				}
				break
			}
			again = Append(again, p)
		}
		if !bytes.Equal(out, again) {
			t.Fatalf("round trip changed %q to %q", out, again)
		}
	})
}
