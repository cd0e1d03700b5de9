// Package evapi is sipside's client of Kamailio's evapi module: netstring
// frames over TCP to evapi's bind_addr. The event input reads what the
// routing script relays (evapi_relay); the AMQP bridge writes what
// event_route[evapi:message-received] gets. Both ends share the framing, the
// module's limits and how a lost connection is found and reopened.
package evapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/sipside/sipside/internal/netstring"
)

// MaxFrame is the largest payload evapi takes: it reads into a 32 KB buffer
// and drops (not truncates) what does not fit, with the netstring header.
const MaxFrame = 32768 - 16

// Writer writes frames to one evapi address on a connection it opens on
// first use and reopens once when a write finds it lost. evapi answers
// nothing: a frame counts as delivered once written.
type Writer struct {
	Addr string

	mu   sync.Mutex
	conn net.Conn
}

// Write sends payload as one netstring frame, in one write (evapi drops a
// frame whose length prefix arrives split). ctx bounds dialling and writing;
// without a deadline a write gets timeout.
func (w *Writer) Write(ctx context.Context, payload []byte, timeout time.Duration) error {
	if len(payload) > MaxFrame {
		return fmt.Errorf("evapi %s: message of %d bytes exceeds evapi's 32 KB buffer; it would be lost", w.Addr, len(payload))
	}
	frame := netstring.Append(nil, payload)
	w.mu.Lock()
	defer w.mu.Unlock()
	for attempt := 0; ; attempt++ {
		if w.conn == nil {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", w.Addr)
			if err != nil {
				return fmt.Errorf("evapi %s: %w (is Kamailio's evapi bind_addr this address?)", w.Addr, err)
			}
			w.conn = c
			// Kamailio writes to us too (evapi_relay); nobody reads it
			// here, so drain it to keep the socket from filling and to
			// notice a close.
			go drain(c)
		}
		deadline, ok := ctx.Deadline()
		if !ok {
			deadline = time.Now().Add(timeout)
		}
		w.conn.SetWriteDeadline(deadline)
		_, err := w.conn.Write(frame)
		if err == nil {
			return nil
		}
		w.conn.Close()
		w.conn = nil
		if attempt > 0 || ctx.Err() != nil {
			return fmt.Errorf("evapi %s: %w", w.Addr, err)
		}
	}
}

func drain(c net.Conn) {
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			c.Close()
			return
		}
	}
}

// Close closes the connection.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conn == nil {
		return nil
	}
	err := w.conn.Close()
	w.conn = nil
	return err
}

// Reader reads the frames Kamailio relays to one evapi address, keeping a
// connection open: it reconnects with backoff (100 ms doubling to 10 s) when
// the connection is refused or lost.
type Reader struct {
	Addr     string
	MaxFrame int // largest frame taken; a larger one ends the connection
	// Frame gets every frame's payload; it is reused after Frame returns.
	Frame func(payload []byte)
	// Optional: told of each connection, each dial failure (with the pause
	// before the next try), each connection lost, and each broken frame.
	Connected  func()
	DialFailed func(err error, retryIn time.Duration)
	Lost       func(err error)
	BadFrame   func(err error)
}

// Run reads until ctx ends.
func (r *Reader) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", r.Addr)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			call(r.DialFailed, err, backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 10*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if r.Connected != nil {
			r.Connected()
		}
		stop := context.AfterFunc(ctx, func() { c.Close() })
		err = r.read(c)
		stop()
		c.Close()
		if ctx.Err() != nil {
			return
		}
		if r.Lost != nil {
			r.Lost(err)
		}
	}
}

func call(f func(error, time.Duration), err error, d time.Duration) {
	if f != nil {
		f(err, d)
	}
}

func (r *Reader) read(c net.Conn) error {
	nr := netstring.NewReader(c, r.MaxFrame)
	for {
		p, err := nr.Next()
		if err != nil {
			if r.BadFrame != nil && (errors.Is(err, netstring.ErrMalformed) || errors.Is(err, netstring.ErrTooBig) || errors.Is(err, io.ErrUnexpectedEOF)) {
				r.BadFrame(err)
			}
			return err
		}
		r.Frame(p)
	}
}
