package evi

import (
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"sort"
	"strings"
	"sync"

	"github.com/sipside/sipside/internal/metrics"
)

// Deps is what a backend may take from the daemon.
type Deps struct {
	Stdin   io.Reader // read by the stdin: input
	Stdout  io.Writer // shared by every stdout: backend; writes must be whole lines
	Log     *slog.Logger
	Metrics *metrics.Registry
	// DMQ is the daemon's DMQ node, for dmq: backends; nil without [dmq].
	DMQ DMQ
}

// backendFactory builds a backend from the part of its socket string after
// "scheme:". Factories must not dial: `sipside check` builds every backend
// to validate a config and closes it again.
type backendFactory func(rest string, d Deps) (Backend, error)

// backendSchemes is the registration table of backend socket schemes.
var backendSchemes = map[string]backendFactory{
	"stdout": newStdoutBackend,
	"udp":    newDatagramBackend("udp"),
	"unix":   newDatagramBackend("unix"),
}

// Schemes lists the backend socket schemes this build knows.
func Schemes() []string {
	s := make([]string, 0, len(backendSchemes)+1)
	for k := range backendSchemes {
		s = append(s, k)
	}
	s = append(s, "virtual")
	sort.Strings(s)
	return s
}

// NewBackend builds a backend from an OpenSIPS-style socket string, such as
// "udp:127.0.0.1:9000" or "virtual:FAILOVER rabbitmq:… flatstore:/x.log".
func NewBackend(socket string, d Deps) (Backend, error) {
	socket = strings.TrimSpace(socket)
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Stdout == nil {
		d.Stdout = io.Discard
	}
	d.Metrics = metrics.OrNew(d.Metrics)
	if strings.HasPrefix(socket, "virtual:") {
		return newVirtual(strings.TrimPrefix(socket, "virtual:"), d)
	}
	scheme, rest := schemeOf(socket)
	f, ok := backendSchemes[scheme]
	if !ok {
		return nil, fmt.Errorf("socket %q: unknown scheme %q: want one of %s", socket, scheme, strings.Join(Schemes(), ", "))
	}
	b, err := f(rest, d)
	if err != nil {
		return nil, fmt.Errorf("socket %q: %w", Redact(socket), err)
	}
	return b, nil
}

// schemeOf splits "scheme:rest"; http(s) URLs keep their scheme in rest.
func schemeOf(socket string) (scheme, rest string) {
	scheme, rest, _ = strings.Cut(socket, ":")
	if scheme == "http" || scheme == "https" {
		rest = socket
	}
	return scheme, rest
}

// Redact hides a password in a socket string (rabbitmq:user:pass@host…,
// http://user:pass@…), so that strings can go into logs and metric labels.
func Redact(socket string) string {
	socket = strings.TrimSpace(socket)
	if rest, ok := strings.CutPrefix(socket, "virtual:"); ok {
		f := strings.Fields(rest)
		for i := range f {
			f[i] = Redact(f[i])
		}
		return "virtual:" + strings.Join(f, " ")
	}
	switch scheme, rest := schemeOf(socket); scheme {
	case "rabbitmq":
		return "rabbitmq:" + redactRabbitMQ(rest)
	case "http", "https":
		if u, err := url.Parse(socket); err == nil && u.User != nil {
			if _, has := u.User.Password(); has {
				return u.Redacted()
			}
		}
	}
	return socket
}

// lockedWriter serialises whole writes from several backends.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// LockWriter makes w safe for whole-line writes from many goroutines.
func LockWriter(w io.Writer) io.Writer { return &lockedWriter{w: w} }
