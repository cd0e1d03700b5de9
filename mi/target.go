package mi

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// Dialect is the management interface flavour spoken at a target.
type Dialect string

const (
	OpenSIPS Dialect = "opensips" // OpenSIPS MI (mi_datagram, mi_http, mi_fifo)
	Kamailio Dialect = "kamailio" // Kamailio jsonrpcs (dgram, xhttp, fifo)
)

// Transport is how requests reach the proxy.
type Transport string

const (
	UDP  Transport = "udp"
	Unix Transport = "unix" // unix datagram socket
	HTTP Transport = "http" // also https
	FIFO Transport = "fifo"
)

// Target is a parsed target string such as opensips:udp:127.0.0.1:8080.
type Target struct {
	Dialect   Dialect
	Transport Transport
	// Addr is host:port for udp, the socket or FIFO path for unix and fifo, and the URL for http.
	Addr string
}

// String returns the target in the form ParseTarget accepts.
func (t Target) String() string {
	if t.Transport == HTTP {
		return string(t.Dialect) + ":" + t.Addr
	}
	return string(t.Dialect) + ":" + string(t.Transport) + ":" + t.Addr
}

const targetForms = "want opensips:udp:HOST:PORT, opensips:unix:/PATH, opensips:http://HOST:PORT/mi, opensips:fifo:/PATH, " +
	"kamailio:udp:HOST:PORT, kamailio:unix:/PATH, kamailio:http://HOST:PORT/RPC or kamailio:fifo:/PATH"

// ParseTarget parses DIALECT:TRANSPORT:ADDRESS. An http URL without a path gets the
// dialect's usual one (/mi for OpenSIPS, /RPC for Kamailio).
func ParseTarget(s string) (Target, error) {
	d, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Target{}, fmt.Errorf("bad MI target %q: %s", s, targetForms)
	}
	t := Target{Dialect: Dialect(strings.ToLower(d))}
	if t.Dialect != OpenSIPS && t.Dialect != Kamailio {
		return Target{}, fmt.Errorf("bad MI target %q: unknown proxy %q; %s", s, d, targetForms)
	}
	tr, addr, ok := strings.Cut(rest, ":")
	if !ok {
		return Target{}, fmt.Errorf("bad MI target %q: no transport; %s", s, targetForms)
	}
	switch Transport(strings.ToLower(tr)) {
	case UDP:
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host == "" || port == "" {
			return Target{}, fmt.Errorf("bad MI target %q: udp wants HOST:PORT, e.g. udp:127.0.0.1:8080", s)
		}
		if _, err := net.LookupPort("udp", port); err != nil {
			return Target{}, fmt.Errorf("bad MI target %q: bad port %q", s, port)
		}
		t.Transport, t.Addr = UDP, addr
	case Unix, FIFO:
		if addr == "" {
			return Target{}, fmt.Errorf("bad MI target %q: %s wants a path, e.g. %s:%s:/run/proxy/mi", s, tr, d, tr)
		}
		t.Transport, t.Addr = Transport(strings.ToLower(tr)), addr
	case "http", "https":
		u, err := url.Parse(rest)
		if err != nil || u.Host == "" {
			return Target{}, fmt.Errorf("bad MI target %q: want a URL such as http://127.0.0.1:8888/mi", s)
		}
		if u.Path == "" || u.Path == "/" {
			if t.Dialect == OpenSIPS {
				u.Path = "/mi"
			} else {
				u.Path = "/RPC"
			}
		}
		t.Transport, t.Addr = HTTP, u.String()
	default:
		return Target{}, fmt.Errorf("bad MI target %q: unknown transport %q; %s", s, tr, targetForms)
	}
	return t, nil
}
