package dmq

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MethodKDMQ is the private SIP method Kamailio's dmq module sends.
const MethodKDMQ = "KDMQ"

// Limits that keep a hostile datagram from costing more than it is worth. A
// UDP payload cannot exceed 65507 bytes anyway; Kamailio chunks its htable sync
// answers at about 60000.
const (
	maxMessageSize = 65535
	maxHeaders     = 128
)

// ErrMalformed is wrapped by every parse error, so that callers can count
// garbage apart from transport failures.
var ErrMalformed = errors.New("malformed SIP message")

// Header is one header field as it appeared on the wire (name as written,
// value trimmed, folded lines joined).
type Header struct {
	Name  string
	Value string
}

// Message is a SIP request or response of the KDMQ subset. Headers keep their
// order: replies copy Via, From, To, Call-ID and CSeq in the order received.
type Message struct {
	// Request line; empty for a response.
	Method     string
	RequestURI string
	// Status line; zero for a request.
	StatusCode int
	Reason     string

	Headers []Header
	Body    []byte
}

// IsRequest tells a request from a response.
func (m *Message) IsRequest() bool { return m.Method != "" }

// compact maps the single-letter forms of RFC 3261 §7.3.3 to full names.
var compact = map[string]string{
	"i": "Call-ID",
	"f": "From",
	"t": "To",
	"v": "Via",
	"l": "Content-Length",
	"c": "Content-Type",
	"m": "Contact",
}

func canonical(name string) string {
	if len(name) == 1 {
		if full, ok := compact[strings.ToLower(name)]; ok {
			return full
		}
	}
	return name
}

// Get returns the first value of the named header (case-insensitive, compact
// forms understood) and whether it was present.
func (m *Message) Get(name string) (string, bool) {
	for _, h := range m.Headers {
		if strings.EqualFold(canonical(h.Name), name) {
			return h.Value, true
		}
	}
	return "", false
}

// Values returns every value of the named header in order.
func (m *Message) Values(name string) []string {
	var out []string
	for _, h := range m.Headers {
		if strings.EqualFold(canonical(h.Name), name) {
			out = append(out, h.Value)
		}
	}
	return out
}

// CallID returns the Call-ID header value.
func (m *Message) CallID() string { v, _ := m.Get("Call-ID"); return v }

// CSeq returns the sequence number and method of the CSeq header.
func (m *Message) CSeq() (uint32, string, error) {
	v, ok := m.Get("CSeq")
	if !ok {
		return 0, "", fmt.Errorf("%w: no CSeq header", ErrMalformed)
	}
	num, method, ok := strings.Cut(strings.TrimSpace(v), " ")
	n, err := strconv.ParseUint(num, 10, 32)
	method = strings.TrimSpace(method)
	if !ok || err != nil || !isToken(method) {
		return 0, "", fmt.Errorf("%w: CSeq %q is not \"NUMBER METHOD\"", ErrMalformed, v)
	}
	return uint32(n), method, nil
}

// MaxForwards returns the Max-Forwards value, or def when the header is absent
// or unparsable: Kamailio treats a missing header as no re-broadcast budget.
func (m *Message) MaxForwards(def int) int {
	v, ok := m.Get("Max-Forwards")
	if !ok {
		return def
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 || n > 255 {
		return def
	}
	return n
}

// Branch returns the branch parameter of the topmost Via.
func (m *Message) Branch() string {
	v, ok := m.Get("Via")
	if !ok {
		return ""
	}
	// A Via header may carry several comma-separated values; the first is topmost.
	v, _, _ = strings.Cut(v, ",")
	return headerParam(v, "branch")
}

// FromURI returns the URI inside the From header's angle brackets (or the bare
// URI before its parameters).
func (m *Message) FromURI() string { v, _ := m.Get("From"); return nameAddrURI(v) }

// nameAddrURI extracts the URI from a name-addr or addr-spec header value.
func nameAddrURI(v string) string {
	if i := strings.IndexByte(v, '<'); i >= 0 {
		if j := strings.IndexByte(v[i:], '>'); j > 0 {
			return v[i+1 : i+j]
		}
		return ""
	}
	u, _, _ := strings.Cut(strings.TrimSpace(v), ";")
	return u
}

// headerParam returns the value of ;name=value in a header value (outside any
// <...> part), or "" when absent.
func headerParam(v, name string) string {
	if i := strings.LastIndexByte(v, '>'); i >= 0 {
		v = v[i+1:]
	}
	for _, p := range strings.Split(v, ";")[1:] {
		k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
		if strings.EqualFold(strings.TrimSpace(k), name) {
			return strings.TrimSpace(val)
		}
	}
	return ""
}

// ParseMessage parses one SIP message from a datagram. A Content-Length
// shorter than the rest of the datagram cuts the body (RFC 3261 §18.3); a
// longer one is an error.
func ParseMessage(data []byte) (*Message, error) {
	if len(data) > maxMessageSize {
		return nil, fmt.Errorf("%w: %d bytes is more than %d", ErrMalformed, len(data), maxMessageSize)
	}
	// Keepalives (CRLF) and leading blank lines are allowed before a message.
	data = bytes.TrimLeft(data, "\r\n")
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrMalformed)
	}
	head, body, found := cutHead(data)
	if !found {
		return nil, fmt.Errorf("%w: no empty line after the headers", ErrMalformed)
	}
	lines := splitLines(head)
	m := &Message{}
	if err := m.parseStartLine(lines[0]); err != nil {
		return nil, err
	}
	for _, l := range lines[1:] {
		if l == "" {
			continue
		}
		if l[0] == ' ' || l[0] == '\t' {
			if len(m.Headers) == 0 {
				return nil, fmt.Errorf("%w: continuation line before any header", ErrMalformed)
			}
			h := &m.Headers[len(m.Headers)-1]
			h.Value = strings.TrimSpace(h.Value + " " + strings.TrimSpace(l))
			continue
		}
		name, value, ok := strings.Cut(l, ":")
		name = strings.TrimSpace(name)
		if !ok || !isToken(name) {
			return nil, fmt.Errorf("%w: header line %q has no \"Name:\"", ErrMalformed, truncate(l, 40))
		}
		if len(m.Headers) == maxHeaders {
			return nil, fmt.Errorf("%w: more than %d headers", ErrMalformed, maxHeaders)
		}
		m.Headers = append(m.Headers, Header{Name: name, Value: strings.TrimSpace(value)})
	}
	if cl, ok := m.Get("Content-Length"); ok {
		n, err := strconv.Atoi(strings.TrimSpace(cl))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%w: Content-Length %q", ErrMalformed, cl)
		}
		if n > len(body) {
			return nil, fmt.Errorf("%w: Content-Length %d but only %d body bytes", ErrMalformed, n, len(body))
		}
		body = body[:n]
	}
	if len(body) > 0 {
		m.Body = append([]byte(nil), body...)
	}
	return m, nil
}

// cutHead splits at the first empty line, accepting CRLF or bare LF endings.
func cutHead(data []byte) (head, body []byte, found bool) {
	i := bytes.Index(data, []byte("\n\r\n"))
	j := bytes.Index(data, []byte("\n\n"))
	switch {
	case i >= 0 && (j < 0 || i < j):
		return data[:i], data[i+3:], true
	case j >= 0:
		return data[:j], data[j+2:], true
	}
	return nil, nil, false
}

func splitLines(head []byte) []string {
	raw := strings.Split(string(head), "\n")
	for i, l := range raw {
		raw[i] = strings.TrimSuffix(l, "\r")
	}
	return raw
}

func (m *Message) parseStartLine(l string) error {
	if strings.HasPrefix(l, "SIP/") {
		ver, rest, _ := strings.Cut(l, " ")
		code, reason, _ := strings.Cut(rest, " ")
		n, err := strconv.Atoi(code)
		if ver != "SIP/2.0" || err != nil || len(code) != 3 || n < 100 || n > 699 {
			return fmt.Errorf("%w: status line %q", ErrMalformed, truncate(l, 60))
		}
		m.StatusCode, m.Reason = n, reason
		return nil
	}
	parts := strings.Split(l, " ")
	if len(parts) != 3 || !isToken(parts[0]) || parts[1] == "" || parts[2] != "SIP/2.0" {
		return fmt.Errorf("%w: request line %q", ErrMalformed, truncate(l, 60))
	}
	m.Method, m.RequestURI = parts[0], parts[1]
	return nil
}

// isToken reports whether s is a non-empty RFC 3261 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-.!%*_+`'~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Bytes serialises the message. Content-Length is written from the body,
// replacing any Content-Length header, so a built message can never lie
// about its size.
func (m *Message) Bytes() []byte {
	var b bytes.Buffer
	b.Grow(256 + len(m.Body))
	if m.IsRequest() {
		fmt.Fprintf(&b, "%s %s SIP/2.0\r\n", m.Method, m.RequestURI)
	} else {
		fmt.Fprintf(&b, "SIP/2.0 %03d %s\r\n", m.StatusCode, m.Reason)
	}
	wroteCL := false
	for _, h := range m.Headers {
		if strings.EqualFold(canonical(h.Name), "Content-Length") {
			fmt.Fprintf(&b, "%s: %d\r\n", h.Name, len(m.Body))
			wroteCL = true
			continue
		}
		b.WriteString(h.Name)
		b.WriteString(": ")
		b.WriteString(h.Value)
		b.WriteString("\r\n")
	}
	if !wroteCL {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(m.Body))
	}
	b.WriteString("\r\n")
	b.Write(m.Body)
	return b.Bytes()
}

// validateRequest checks what a server needs to answer a request at all.
func (m *Message) validateRequest() error {
	for _, h := range []string{"Via", "From", "To", "Call-ID"} {
		if v, ok := m.Get(h); !ok || v == "" {
			return fmt.Errorf("%w: no %s header", ErrMalformed, h)
		}
	}
	_, method, err := m.CSeq()
	if err != nil {
		return err
	}
	if method != m.Method {
		return fmt.Errorf("%w: CSeq method %s differs from request method %s", ErrMalformed, method, m.Method)
	}
	return nil
}

// canReply reports whether a reply to m could be matched by its sender: it
// needs at least a Via, Call-ID and CSeq to copy.
func (m *Message) canReply() bool {
	_, via := m.Get("Via")
	_, cid := m.Get("Call-ID")
	_, cseq := m.Get("CSeq")
	return m.IsRequest() && m.Method != "ACK" && via && cid && cseq
}

// Reply builds a response the way Kamailio's sl module does: Via, To, From,
// CSeq and Call-ID copied in that order, a To tag added when absent, then
// Content-Type (only with a body), Server and Content-Length.
func (m *Message) Reply(code int, reason, toTag, contentType string, body []byte) *Message {
	r := &Message{StatusCode: code, Reason: reason, Body: body}
	for _, h := range m.Headers {
		if strings.EqualFold(canonical(h.Name), "Via") {
			r.Headers = append(r.Headers, Header{"Via", h.Value})
		}
	}
	if to, ok := m.Get("To"); ok {
		if headerParam(to, "tag") == "" && toTag != "" {
			to += ";tag=" + toTag
		}
		r.Headers = append(r.Headers, Header{"To", to})
	}
	for _, name := range []string{"From", "CSeq", "Call-ID"} {
		if v, ok := m.Get(name); ok {
			r.Headers = append(r.Headers, Header{name, v})
		}
	}
	if len(body) > 0 && contentType != "" {
		r.Headers = append(r.Headers, Header{"Content-Type", contentType})
	}
	r.Headers = append(r.Headers, Header{"Server", userAgent}, Header{"Content-Length", ""})
	return r
}

// userAgent is what sipside puts in User-Agent and Server.
const userAgent = "sipside"

// reasonPhrase holds the phrases Kamailio uses for the codes a DMQ node sends.
func reasonPhrase(code int) string {
	switch code {
	case 200:
		return "OK"
	case 202:
		return "Accepted DMQ"
	case 400:
		return "Bad Request"
	case 404:
		return "User Not Found"
	case 405:
		return "Method Not Allowed"
	case 408:
		return "Request Timeout"
	case 500:
		return "Server Internal Error"
	case 503:
		return "Service Unavailable"
	}
	return "Unknown"
}

// newTag returns a fresh To tag for a stateless reply.
func newTag() string { return randHex(8) }
