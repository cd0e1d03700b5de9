package dmq

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// Timers are the SIP timers of a non-INVITE transaction over UDP (RFC 3261
// §17.1.2). Kamailio's tm uses T1 500 ms, T2 4 s and fr_timer 30 s; RFC 3261's
// Timer F is 64*T1 = 32 s. Tests shrink them.
type Timers struct {
	T1      time.Duration
	T2      time.Duration
	Timeout time.Duration // Timer F: no final answer by then is a 408
}

// DefaultTimers are RFC 3261's values.
var DefaultTimers = Timers{T1: 500 * time.Millisecond, T2: 4 * time.Second, Timeout: 32 * time.Second}

// ErrTimeout is a client transaction's Timer F: no final response. The node
// list treats it as Kamailio treats its local 408.
var ErrTimeout = errors.New("no final response (408 Request Timeout)")

// clientTxs matches responses to the requests waiting for them, by the
// branch of the topmost Via, which this node makes unique per request.
type clientTxs struct {
	mu      sync.Mutex
	pending map[string]chan *Message
}

// register must happen before the request is sent: an answer faster than the
// send call returns must still find its waiter.
func (c *clientTxs) register(branch string) chan *Message {
	ch := make(chan *Message, 4)
	c.mu.Lock()
	if c.pending == nil {
		c.pending = make(map[string]chan *Message)
	}
	c.pending[branch] = ch
	c.mu.Unlock()
	return ch
}

func (c *clientTxs) unregister(branch string) {
	c.mu.Lock()
	delete(c.pending, branch)
	c.mu.Unlock()
}

// deliver hands a response to its transaction; false when none waits for it
// (a late or stray answer).
func (c *clientTxs) deliver(resp *Message) bool {
	c.mu.Lock()
	ch, ok := c.pending[resp.Branch()]
	c.mu.Unlock()
	if !ok {
		return false
	}
	select {
	case ch <- resp:
	default: // a burst of duplicate provisionals; the final one will come again
	}
	return true
}

// roundTrip runs one non-INVITE client transaction: send, retransmit at T1
// doubling up to T2 (at T2 once a provisional came), give up at Timeout.
func (t *transport) roundTrip(ctx context.Context, dst netip.AddrPort, req *Message, channel string) (*Message, error) {
	return t.roundTripOn(ctx, dst, false, req, channel)
}

// roundTripOn is roundTrip over UDP or, when stream is set, over TCP: then
// nothing is retransmitted and only Timer F applies.
func (t *transport) roundTripOn(ctx context.Context, dst netip.AddrPort, stream bool, req *Message, channel string) (*Message, error) {
	branch := req.Branch()
	if branch == "" {
		return nil, fmt.Errorf("request to %s has no Via branch", dst)
	}
	ch := t.clients.register(branch)
	defer t.clients.unregister(branch)
	raw := req.Bytes()
	var err error
	if stream {
		if t.tcp == nil {
			return nil, fmt.Errorf("KDMQ %s to %s: tcp is not enabled on this node (listen with ;transport=tcp)", channel, dst)
		}
		t.metrics.messages.With("out", channel, "request").Inc()
		err = t.tcp.send(ctx, dst, raw)
	} else {
		err = t.send(dst, raw, channel, true)
	}
	if err != nil {
		return nil, err
	}
	interval := t.timers.T1
	retrans := time.NewTimer(interval)
	defer retrans.Stop()
	if stream {
		retrans.Stop() // reliable transport: no Timer E
	}
	timeout := time.NewTimer(t.timers.Timeout)
	defer timeout.Stop()
	proceeding := false
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timeout.C:
			t.metrics.timeouts.With(channel).Inc()
			return nil, fmt.Errorf("KDMQ %s to %s: %w", channel, dst, ErrTimeout)
		case <-retrans.C:
			t.metrics.retransmissions.With(channel).Inc()
			if err := t.send(dst, raw, channel, false); err != nil {
				t.rl.WarnKey("retransmit "+dst.String(), "dmq: retransmission failed", "to", dst.String(), "channel", channel, "err", err)
			}
			if proceeding {
				interval = t.timers.T2
			} else {
				interval = min(2*interval, t.timers.T2)
			}
			retrans.Reset(interval)
		case resp := <-ch:
			if resp.StatusCode >= 200 {
				return resp, nil
			}
			if !proceeding {
				proceeding = true
				interval = t.timers.T2
			}
		}
	}
}

// serverTx remembers the answer to one received request so that a
// retransmission gets the very same reply without running the handler again.
type serverTx struct {
	resp    []byte // nil while the handler runs: copies are then ignored
	reply   replier
	expires time.Time
}

type serverTxs struct {
	mu  sync.Mutex
	txs map[string]*serverTx
}

func serverKey(m *Message) string {
	cseq, _ := m.Get("CSeq")
	return m.Branch() + "\x00" + m.CallID() + "\x00" + cseq
}

// begin returns (nil, true) for a new request; for a copy it returns the
// cached answer (nil while still in progress) and false.
func (s *serverTxs) begin(key string, now time.Time, ttl time.Duration) (*serverTx, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.txs == nil {
		s.txs = make(map[string]*serverTx)
	}
	if tx, ok := s.txs[key]; ok && now.Before(tx.expires) {
		return tx, false
	}
	s.txs[key] = &serverTx{expires: now.Add(ttl)}
	return nil, true
}

func (s *serverTxs) finish(key string, resp []byte, reply replier, now time.Time, ttl time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tx, ok := s.txs[key]; ok {
		tx.resp, tx.reply, tx.expires = resp, reply, now.Add(ttl)
	}
}

// sweep forgets answers older than Timer J (64*T1 for UDP).
func (s *serverTxs) sweep(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, tx := range s.txs {
		if now.After(tx.expires) {
			delete(s.txs, k)
		}
	}
}
