package evi

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// datagramBackend sends each event as one datagram, byte for byte what
// OpenSIPS's event_datagram sends. It is fire-and-forget, as in OpenSIPS:
// only a local send error counts as a failure; a datagram that nobody reads
// is "delivered".
type datagramBackend struct {
	network, addr string

	mu   sync.Mutex
	conn net.Conn
}

func newDatagramBackend(network string) backendFactory {
	return func(rest string, _ Deps) (Backend, error) {
		network := network // the factory is called many times: do not rewrite the captured name
		switch network {
		case "udp":
			if err := checkHostPort(rest); err != nil {
				return nil, err
			}
		case "unix":
			if !strings.HasPrefix(rest, "/") {
				return nil, fmt.Errorf("a unix socket needs an absolute path")
			}
			network = "unixgram"
		}
		return &datagramBackend{network: network, addr: rest}, nil
	}
}

func (d *datagramBackend) Deliver(ctx context.Context, ev *Event) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn == nil {
		var dl net.Dialer
		c, err := dl.DialContext(ctx, d.network, d.addr)
		if err != nil {
			return fmt.Errorf("%s %s: %w", d.network, d.addr, err)
		}
		d.conn = c
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = d.conn.SetWriteDeadline(dl)
	} else {
		_ = d.conn.SetWriteDeadline(time.Time{})
	}
	if _, err := d.conn.Write(ev.Notification()); err != nil {
		// Re-dial next time: a unix peer may have re-created its socket.
		d.conn.Close()
		d.conn = nil
		return fmt.Errorf("%s %s: %w", d.network, d.addr, err)
	}
	return nil
}

func (d *datagramBackend) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != nil {
		err := d.conn.Close()
		d.conn = nil
		return err
	}
	return nil
}
