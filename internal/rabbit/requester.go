package rabbit

import (
	"context"
	"fmt"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Requester publishes requests whose reply is their confirmation: on a channel
// without publisher confirms, with mandatory set, consuming DirectReplyTo on
// the same channel. A request that no queue takes comes back as a return
// (OnReturn); a channel that dies closes the lost channel of every request
// sent on it, so that its waiters fail at once instead of at their timeout.
//
// A confirm would add a round trip and a wait per request that the reply
// makes redundant; the broker still tells us what confirms would have told a
// requester that waits for a reply: unroutable (return), connection lost
// (channel closed), exchange missing (checked before the send).
type Requester struct {
	m    *Manager
	opts RequesterOptions

	mu      sync.Mutex
	cur     *reqChannel
	changed chan struct{}

	remove func()
}

// RequesterOptions are the callbacks of a Requester. Both run on the
// library's delivery goroutines: they must not block.
type RequesterOptions struct {
	// OnReply gets every reply on DirectReplyTo; nil: no reply consumer
	// (replies arrive elsewhere, such as Kazoo's targeted exchange).
	OnReply func(amqp.Delivery)
	// OnReturn gets every request that no queue took.
	OnReturn func(amqp.Return)
}

type reqChannel struct {
	ch   *amqp.Channel
	sess *Session
	done chan struct{} // closed when the channel is gone
}

// NewRequester registers a requester with m; its channel opens on every
// connection (as a Hook: a channel that cannot even open drops the connection).
func (m *Manager) NewRequester(ctx context.Context, opts RequesterOptions) (*Requester, error) {
	r := &Requester{m: m, opts: opts, changed: make(chan struct{})}
	remove, err := m.OnConnect(ctx, func(ctx context.Context, conn *amqp.Connection) error {
		return r.open(m.sessionFor(conn))
	})
	r.remove = remove
	if err != nil {
		return r, fmt.Errorf("rabbit: open requester channel: %w", err)
	}
	return r, nil
}

func (r *Requester) open(s *Session) error {
	ch, err := s.Conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	var replies <-chan amqp.Delivery
	if r.opts.OnReply != nil {
		replies, err = ch.Consume(DirectReplyTo, "", true, false, false, false, nil)
		if err != nil {
			ch.Close()
			return fmt.Errorf("consume %s: %w", DirectReplyTo, err)
		}
	}
	rc := &reqChannel{ch: ch, sess: s, done: make(chan struct{})}
	returns := ch.NotifyReturn(make(chan amqp.Return, 256))
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	go func() {
		for ret := range returns {
			if r.opts.OnReturn != nil {
				r.opts.OnReturn(ret)
			}
		}
	}()
	if replies != nil {
		go func() {
			for d := range replies {
				r.opts.OnReply(d)
			}
		}()
	}
	go r.watch(rc, closed)
	r.mu.Lock()
	r.cur = rc
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	return nil
}

// watch reopens the channel when only the channel died (a channel exception
// on a live connection); the manager reopens it with the next connection.
func (r *Requester) watch(rc *reqChannel, closed <-chan *amqp.Error) {
	cerr := <-closed
	close(rc.done)
	r.mu.Lock()
	if r.cur == rc {
		r.cur = nil
	}
	r.mu.Unlock()
	if cerr == nil || rc.sess.Conn.IsClosed() {
		return
	}
	r.m.log.Warn("AMQP requester channel closed by broker; reopening", "err", cerr)
	r.m.hookMu.Lock()
	defer r.m.hookMu.Unlock()
	if rc.sess.Conn.IsClosed() {
		return
	}
	if err := r.open(rc.sess); err != nil {
		r.m.log.Error("AMQP requester channel reopen failed; closing the connection to start over", "err", err)
		rc.sess.Conn.Close()
	}
}

// Close unregisters the requester and closes its channel.
func (r *Requester) Close() {
	if r.remove != nil {
		r.remove()
	}
	r.mu.Lock()
	rc := r.cur
	r.cur = nil
	r.mu.Unlock()
	if rc != nil {
		rc.ch.Close()
	}
}

// current waits (within ctx) for an open channel.
func (r *Requester) current(ctx context.Context) (*reqChannel, error) {
	for {
		r.mu.Lock()
		rc, changed := r.cur, r.changed
		r.mu.Unlock()
		if rc != nil {
			select {
			case <-rc.done:
			case <-rc.sess.done:
			default:
				return rc, nil
			}
		}
		if err := r.m.waitChange(ctx, changed); err != nil {
			return nil, err
		}
	}
}

// Send publishes a request (mandatory, not confirmed) and returns a channel
// that is closed if the channel it went out on dies: a direct reply-to reply
// can only come back on that channel. While disconnected it waits for a
// connection within ctx; a missing exchange is ErrNoExchange before anything
// is sent.
func (r *Requester) Send(ctx context.Context, exchange, key string, msg amqp.Publishing) (lost <-chan struct{}, err error) {
	for {
		rc, err := r.current(ctx)
		if err != nil {
			return closedChan, err
		}
		if err := r.m.checkExchange(ctx, rc.sess, exchange); err != nil {
			return closedChan, err
		}
		select {
		case <-rc.sess.unblocked():
		case <-ctx.Done():
			return closedChan, fmt.Errorf("broker blocks publishing (resource alarm) and the deadline passed: %w", context.Cause(ctx))
		}
		err = rc.ch.PublishWithContext(ctx, exchange, key, true, false, msg)
		if err == nil {
			return rc.done, nil
		}
		if rc.ch.IsClosed() {
			// Not sent: the channel was gone already. The next one may take it.
			select {
			case <-rc.done:
				continue
			case <-ctx.Done():
				return closedChan, fmt.Errorf("%w: %w", ErrNotConnected, context.Cause(ctx))
			}
		}
		return closedChan, fmt.Errorf("%w: %w", ErrUnconfirmed, err)
	}
}
