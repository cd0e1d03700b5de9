package mi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/valyala/fastjson"
)

// Result is the "result" member of a successful reply, kept as the raw JSON the
// proxy sent so that nothing (key order, duplicate keys, big integers) is lost.
type Result struct {
	raw []byte
}

// NewResult wraps raw JSON as a Result; it is meant for tests and fakes.
func NewResult(raw []byte) Result { return Result{raw: raw} }

// Raw returns the result's JSON text.
func (r Result) Raw() []byte { return r.raw }

// String returns the result's JSON text.
func (r Result) String() string { return string(r.raw) }

// Value parses the result for field access. Each call parses afresh, so the
// value may be kept and used from any goroutine that owns it.
func (r Result) Value() (*fastjson.Value, error) {
	var p fastjson.Parser
	v, err := p.ParseBytes(r.raw)
	if err != nil {
		return nil, fmt.Errorf("parse MI result: %w", err)
	}
	return v, nil
}

// Text returns a string result (OpenSIPS "OK", Kamailio's core.version) without quotes.
func (r Result) Text() (string, error) {
	v, err := r.Value()
	if err != nil {
		return "", err
	}
	b, err := v.StringBytes()
	if err != nil {
		return "", fmt.Errorf("MI result is not a string but %s", v.Type())
	}
	return string(b), nil
}

// Decode unmarshals the result into v with encoding/json.
func (r Result) Decode(v any) error {
	if err := json.Unmarshal(r.raw, v); err != nil {
		return fmt.Errorf("decode MI result: %w", err)
	}
	return nil
}

// Indent returns the result as indented JSON, as `sipside mi` prints it.
func (r Result) Indent() []byte {
	var b bytes.Buffer
	if err := json.Indent(&b, r.raw, "", "  "); err != nil {
		return append([]byte(nil), r.raw...)
	}
	return b.Bytes()
}

// Error is a JSON-RPC error reply: the proxy understood the request and refused it.
// OpenSIPS uses JSON-RPC codes (-32601 Method not found, -32602 Invalid params) for
// engine errors and small positive codes (400, 404, 480) for its commands' own
// errors; Kamailio answers 500 with a message for nearly everything. OpenSIPS's
// mi_datagram also answers some failures with a bare text line ("400 Parse_error",
// "500 Internal error"), which becomes an Error as well.
type Error struct {
	Code    int
	Message string
	Data    string // the "data" member: its text when a JSON string, else raw JSON; "" when absent
	Method  string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s: %d %s", e.Method, e.Code, e.Message)
	if e.Data != "" {
		s += ": " + e.Data
	}
	return s
}

// reply is one parsed reply datagram or body.
type reply struct {
	id     []byte // raw JSON of "id"; nil when absent
	result []byte
	err    *Error
}

var errNotJSONRPC = errors.New("not a JSON-RPC reply")

// parseReply parses a reply. Plain-text status lines ("400 Parse_error") come back as
// an Error with a nil id; anything else that is not a JSON-RPC reply is an error.
func parseReply(b []byte) (reply, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return reply{}, fmt.Errorf("%w: empty", errNotJSONRPC)
	}
	if b[0] != '{' {
		if e := parseStatusLine(b); e != nil {
			return reply{err: e}, nil
		}
		return reply{}, fmt.Errorf("%w: %q", errNotJSONRPC, clip(b, 80))
	}
	// fastjson's parser lets raw control bytes through in strings; the validator does
	// not, and a Result must be JSON that any decoder takes.
	if err := fastjson.ValidateBytes(b); err != nil {
		return reply{}, fmt.Errorf("%w: %v", errNotJSONRPC, err)
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(b)
	if err != nil {
		return reply{}, fmt.Errorf("%w: %v", errNotJSONRPC, err)
	}
	o, err := v.Object()
	if err != nil {
		return reply{}, fmt.Errorf("%w: %v", errNotJSONRPC, err)
	}
	var r reply
	if id := o.Get("id"); id != nil {
		r.id = id.MarshalTo(nil)
	}
	if ev := o.Get("error"); ev != nil && ev.Type() != fastjson.TypeNull {
		e := &Error{Code: ev.GetInt("code"), Message: string(ev.GetStringBytes("message"))}
		if d := ev.Get("data"); d != nil {
			if s, err := d.StringBytes(); err == nil {
				e.Data = string(s)
			} else {
				e.Data = string(d.MarshalTo(nil))
			}
		}
		if ev.Get("code") == nil && ev.Get("message") == nil {
			e.Message = string(ev.MarshalTo(nil))
		}
		r.err = e
		return r, nil
	}
	res := o.Get("result")
	if res == nil {
		return reply{}, fmt.Errorf("%w: neither result nor error in %q", errNotJSONRPC, clip(b, 80))
	}
	r.result = res.MarshalTo(nil)
	return r, nil
}

// parseStatusLine recognises mi_datagram's bare "CODE Reason" replies.
func parseStatusLine(b []byte) *Error {
	if len(b) < 5 || b[3] != ' ' || bytes.IndexByte(b, '\n') >= 0 {
		return nil
	}
	code, err := strconv.Atoi(string(b[:3]))
	if err != nil || code < 100 {
		return nil
	}
	return &Error{Code: code, Message: string(b[4:])}
}

func clip(b []byte, n int) []byte {
	if len(b) > n {
		return append(append([]byte(nil), b[:n]...), "..."...)
	}
	return b
}
