package evi

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Listen is a parsed input socket string, written as OpenSIPS writes the
// sockets it sends events to: udp:HOST:PORT, unix:/path, tcp:HOST:PORT,
// evapi:HOST:PORT, or stdin:.
type Listen struct {
	Proto string // udp, unix, tcp, evapi, stdin
	Addr  string // HOST:PORT, or a path for unix
}

func (l Listen) String() string {
	if l.Proto == "stdin" {
		return "stdin:"
	}
	return l.Proto + ":" + l.Addr
}

// ParseListen parses an input socket string.
func ParseListen(s string) (Listen, error) {
	proto, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Listen{}, fmt.Errorf("%q has no protocol: write udp:HOST:PORT, unix:/path, tcp:HOST:PORT, evapi:HOST:PORT or stdin:", s)
	}
	switch proto {
	case "udp", "tcp", "evapi":
		if err := checkHostPort(rest); err != nil {
			return Listen{}, fmt.Errorf("%q: %w", s, err)
		}
		return Listen{Proto: proto, Addr: rest}, nil
	case "unix":
		if !strings.HasPrefix(rest, "/") {
			return Listen{}, fmt.Errorf("%q: a unix socket needs an absolute path, e.g. unix:/run/sipside/events.sock", s)
		}
		return Listen{Proto: proto, Addr: rest}, nil
	case "stdin":
		if rest != "" {
			return Listen{}, fmt.Errorf("%q: write stdin: with nothing after the colon", s)
		}
		return Listen{Proto: proto}, nil
	default:
		return Listen{}, fmt.Errorf("%q: unknown protocol %q: want udp, unix, tcp, evapi or stdin", s, proto)
	}
}

// checkHostPort accepts HOST:PORT with a numeric port in 1..65535.
func checkHostPort(hp string) error {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return fmt.Errorf("want HOST:PORT: %w", err)
	}
	if host == "" {
		return fmt.Errorf("no host in %q: write an address such as 127.0.0.1", hp)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return nil
}
