package mi

import (
	"bufio"
	"bytes"
	"io"
	"testing"

	"github.com/valyala/fastjson"
)

var replySeeds = []string{
	`{"jsonrpc":"2.0","result":{"Server":"OpenSIPS (3.6.8 (x86_64/linux))"},"id":1}`,
	`{"jsonrpc":"2.0","result":"kamailio 5.6.3 (x86_64/linux) "}`,
	`{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params","data":"Too few or too many parameters"},"id":1}`,
	`{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}`,
	`{"jsonrpc":"2.0","result":{"":"a","":"b"},"id":"abc"}`,
	`400 Parse_error`,
	`500 Internal error`,
	`{"jsonrpc":"2.0","result":{}}`,
	"{\"jsonrpc\":\"2.0\",\"result\":\"\xff\xfe\",\"id\":4294967296}",
}

// FuzzParseReply: the JSON-RPC reply parser (datagram bodies, HTTP bodies, FIFO replies).
func FuzzParseReply(f *testing.F) {
	for _, s := range replySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseReply(b)
		if err != nil {
			return
		}
		if r.err == nil && fastjson.ValidateBytes(r.result) != nil {
			t.Fatalf("result %q of %q is not JSON", r.result, b)
		}
	})
}

// FuzzDatagramDispatch: whatever arrives on the socket, a waiting call gets at most
// one reply and nothing panics.
func FuzzDatagramDispatch(f *testing.F) {
	for _, s := range replySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d := newDgram(Target{Dialect: OpenSIPS, Transport: UDP, Addr: "127.0.0.1:1"}, "", func(string, []byte) {})
		ch := make(chan dgramReply, 1)
		d.pending[1] = ch
		var p fastjson.Parser
		d.dispatch(&p, b)
		d.dispatch(&p, b)
		select {
		case r := <-ch:
			if !bytes.Equal(r.body, b) {
				t.Fatalf("delivered %q, sent %q", r.body, b)
			}
		default:
		}
	})
}

// FuzzHTTPReply: the HTTP reply reader, as Kamailio's xhttp and OpenSIPS's httpd
// (or anything else on that port) may answer.
func FuzzHTTPReply(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nSia: SIP/2.0/TCP 127.0.0.1:34616\r\nContent-Type: application/json\r\nServer: kamailio (5.6.3 (x86_64/linux))\r\nContent-Length: 66\r\n\r\n{\"jsonrpc\":\"2.0\",\"result\":\"kamailio 5.6.3 (x86_64/linux) \",\"id\":1}"))
	f.Add([]byte("HTTP/1.1 500 Key name doesn't exist in htable.\r\nContent-Type: application/json\r\nContent-Length: 91\r\n\r\n{\"jsonrpc\":\"2.0\",\"error\":{\"code\":500,\"message\":\"Key name doesn't exist in htable.\"},\"id\":6}"))
	f.Add([]byte("HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 46\r\n\r\n<html><body>Unable to parse URL!</body></html>"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		body, _, err := readHTTPReply(bufio.NewReader(bytes.NewReader(b)))
		if err == nil && len(body) > len(b) {
			t.Fatalf("body of %d bytes from %d bytes of reply", len(body), len(b))
		}
	})
}

// chunkReader returns its data n bytes per Read, as a FIFO written in chunks does.
type chunkReader struct {
	b []byte
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := min(c.n, len(p), len(c.b))
	copy(p, c.b[:n])
	c.b = c.b[n:]
	return n, nil
}

// FuzzFIFOReply: the FIFO stream reader ends exactly at the end of the first
// complete reply, however the proxy splits its writes.
func FuzzFIFOReply(f *testing.F) {
	for _, s := range replySeeds {
		f.Add([]byte(s), uint8(7))
	}
	f.Add([]byte(`{"jsonrpc":"2.0","result":["a","b"],"id":1}{"next":1}`), uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, chunk uint8) {
		r := &chunkReader{b: b, n: int(chunk)%64 + 1}
		got, err := readFIFOReply(r)
		if err != nil {
			return
		}
		if !complete(got) || !bytes.HasPrefix(b, got) {
			t.Fatalf("read %q from %q", got, b)
		}
	})
}
