package dmq

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// URI is the part of a SIP URI that DMQ uses. Host and Port are kept exactly as
// written: Kamailio compares node identities as strings, so sip:127.0.0.9 and
// sip:127.0.0.9:5060 are two different nodes, and so are localhost and
// 127.0.0.1.
type URI struct {
	User   string
	Host   string // IPv6 literals keep their brackets
	Port   int    // 0 when absent
	Params []Param
}

// Param is one ;name[=value] URI parameter.
type Param struct {
	Name, Value string
}

// Param returns the value of the named parameter and whether it is present.
func (u URI) Param(name string) (string, bool) {
	for _, p := range u.Params {
		if strings.EqualFold(p.Name, name) {
			return p.Value, true
		}
	}
	return "", false
}

// ParseURI parses sip:[user@]host[:port][;params]. It is deliberately
// stricter than RFC 3261: no headers (?...), no sips:, no password, and the
// host must be an IP literal or a syntactically valid host name, because
// whatever this returns may end up in a node list that Kamailio parses.
func ParseURI(s string) (URI, error) {
	var u URI
	rest, ok := strings.CutPrefix(s, "sip:")
	if !ok {
		return u, fmt.Errorf("uri %q: want the sip: scheme", truncate(s, 60))
	}
	if strings.ContainsAny(rest, " \t\r\n\x00?<>\"") {
		return u, fmt.Errorf("uri %q: contains a space, control or reserved character", truncate(s, 60))
	}
	hostport, params, _ := strings.Cut(rest, ";")
	if at := strings.LastIndexByte(hostport, '@'); at >= 0 {
		u.User = hostport[:at]
		hostport = hostport[at+1:]
		if u.User == "" || strings.ContainsAny(u.User, ":@") {
			return u, fmt.Errorf("uri %q: bad user part", truncate(s, 60))
		}
	}
	host, port, err := splitHostPort(hostport)
	if err != nil {
		return u, fmt.Errorf("uri %q: %w", truncate(s, 60), err)
	}
	u.Host, u.Port = host, port
	if params != "" {
		for _, p := range strings.Split(params, ";") {
			name, value, _ := strings.Cut(p, "=")
			if !isToken(name) || (value != "" && !isParamValue(value)) {
				return u, fmt.Errorf("uri %q: bad parameter %q", truncate(s, 60), truncate(p, 30))
			}
			u.Params = append(u.Params, Param{name, value})
		}
	}
	return u, nil
}

func isParamValue(v string) bool {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(";=,@", c) >= 0 {
			return false
		}
	}
	return true
}

func splitHostPort(hp string) (string, int, error) {
	var host, port string
	if strings.HasPrefix(hp, "[") {
		end := strings.IndexByte(hp, ']')
		if end < 0 {
			return "", 0, fmt.Errorf("unclosed [ in host")
		}
		host, port = hp[:end+1], hp[end+1:]
		if a, err := netip.ParseAddr(host[1:end]); err != nil || !a.Is6() {
			return "", 0, fmt.Errorf("host %q is not an IPv6 literal", host)
		}
		if port != "" {
			p, ok := strings.CutPrefix(port, ":")
			if !ok {
				return "", 0, fmt.Errorf("garbage %q after IPv6 literal", port)
			}
			port = p
		}
	} else {
		h, p, hasPort := strings.Cut(hp, ":")
		host, port = h, p
		if hasPort && p == "" {
			return "", 0, fmt.Errorf("empty port")
		}
		if !validHost(host) {
			return "", 0, fmt.Errorf("host %q is neither an IP address nor a host name", host)
		}
	}
	if port == "" {
		return host, 0, nil
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || port[0] == '0' || port[0] == '+' {
		return "", 0, fmt.Errorf("port %q is not 1-65535", port)
	}
	return host, n, nil
}

// validHost accepts an IPv4 literal or an RFC 1123 host name.
func validHost(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Is4()
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// hostPort formats host[:port] as written.
func hostPort(host string, port int) string {
	if port == 0 {
		return host
	}
	return host + ":" + strconv.Itoa(port)
}

// String formats the URI back; Params keep their order.
func (u URI) String() string {
	var b strings.Builder
	b.WriteString("sip:")
	if u.User != "" {
		b.WriteString(u.User)
		b.WriteByte('@')
	}
	b.WriteString(hostPort(u.Host, u.Port))
	for _, p := range u.Params {
		b.WriteByte(';')
		b.WriteString(p.Name)
		if p.Value != "" {
			b.WriteByte('=')
			b.WriteString(p.Value)
		}
	}
	return b.String()
}
