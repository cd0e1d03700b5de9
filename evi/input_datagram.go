package evi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/sipside/sipside/internal/metrics"
)

// maxDatagram is one more than the largest datagram we accept, so that a
// read that fills the buffer can be told apart as oversized.
const maxDatagram = 65536

type inputBase struct {
	name     string
	received *metrics.Counter
	invalid  *metrics.Counter
	bad      *rateLog
}

func (b *inputBase) reject(reason error, size int) {
	b.invalid.Inc()
	b.bad.Warn("rejected malformed event", "error", reason, "bytes", size)
}

// datagramInput reads OpenSIPS event_datagram notifications from a UDP or
// unix datagram socket: one JSON-RPC notification per datagram.
type datagramInput struct {
	inputBase
	conn net.PacketConn
	path string // unix socket file to remove on Close
}

func openDatagramInput(l Listen, base inputBase) (*datagramInput, error) {
	in := &datagramInput{inputBase: base}
	var err error
	switch l.Proto {
	case "udp":
		in.conn, err = net.ListenPacket("udp", l.Addr)
	case "unix":
		// A socket file left by a killed sipside would make bind fail.
		if fi, statErr := os.Lstat(l.Addr); statErr == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(l.Addr)
		}
		in.conn, err = net.ListenPacket("unixgram", l.Addr)
		in.path = l.Addr
	}
	if err != nil {
		return nil, fmt.Errorf("input %s: %w (is another process bound there?)", l, err)
	}
	// Bursts of events (a registration storm) arrive faster than one
	// goroutine parses them; a larger kernel buffer absorbs them.
	if rb, ok := in.conn.(interface{ SetReadBuffer(int) error }); ok {
		_ = rb.SetReadBuffer(4 << 20)
	}
	return in, nil
}

// Addr is the bound address (useful with port 0 in tests).
func (in *datagramInput) Addr() net.Addr { return in.conn.LocalAddr() }

func (in *datagramInput) Run(ctx context.Context, sink Sink) error {
	stop := context.AfterFunc(ctx, func() { _ = in.conn.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, maxDatagram)
	for {
		n, _, err := in.conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("input %s: %w", in.name, err)
		}
		if n == len(buf) {
			in.reject(fmt.Errorf("datagram of %d bytes or more is larger than an event can be", n), n)
			continue
		}
		if ev, ok := in.parse(buf[:n]); ok {
			sink.Accept(ev)
		}
	}
}

func (in *datagramInput) parse(b []byte) (*Event, bool) {
	note, err := ParseDatagram(b)
	if err != nil {
		in.reject(err, len(b))
		return nil, false
	}
	name, err := note.Name()
	if err != nil {
		in.reject(err, len(b))
		return nil, false
	}
	raw := make([]byte, len(b))
	copy(raw, b)
	ev := &Event{Name: name, Raw: raw, Received: time.Now(), Source: in.name}
	if note.Params != nil {
		off := cap(b) - cap(note.Params) // offset of params inside b
		ev.Params = raw[off : off+len(note.Params) : off+len(note.Params)]
	}
	if note.ID != nil {
		// Someone sent a request, not a notification: forward it as the
		// notification event_datagram would have sent.
		ev.Raw = nil
	}
	in.received.Inc()
	return ev, true
}

func (in *datagramInput) Close() error {
	err := in.conn.Close()
	if in.path != "" {
		_ = os.Remove(in.path)
	}
	return err
}
