package rabbit

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Task is work that needs a channel of its own on every connection: a consumer
// and the declares it needs, a reply queue. A task that fails (a missing
// exchange, a 406, a 403) is down on its own and retried with backoff; the
// connection, the publishers and every other task stay up. Connection hooks,
// by contrast, drop the connection when they fail.
type Task struct {
	// Name labels logs ("consumer NAME down").
	Name string
	// Run sets the task up on ch, calls up() once it is serving, and serves
	// until ch closes (return the channel's close error) or ctx ends. An error
	// before up() is a setup failure. Run owns ch: the supervisor closes it
	// after Run returns.
	Run func(ctx context.Context, s *Session, ch *amqp.Channel, up func()) error
	// State, if set, is told every change: up, or down with the reason (nil
	// while the connection itself is down).
	State func(up bool, err error)
	// MinRetry and MaxRetry bound the pause before setting up again on the
	// same connection (0 means 1s and 30s). A new connection retries at once.
	MinRetry, MaxRetry time.Duration
}

// Go supervises t until ctx ends: on every live connection it opens a channel
// and runs t, and after a failure on a live connection it waits (doubling from
// MinRetry to MaxRetry) and runs it again on a new channel. Go returns at once;
// the returned channel is closed when the supervisor has stopped.
func (m *Manager) Go(ctx context.Context, t Task) <-chan struct{} {
	if t.MinRetry <= 0 {
		t.MinRetry = time.Second
	}
	if t.MaxRetry <= 0 {
		t.MaxRetry = 30 * time.Second
	}
	if t.MaxRetry < t.MinRetry {
		t.MaxRetry = t.MinRetry
	}
	if t.State == nil {
		t.State = func(bool, error) {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.supervise(ctx, t)
	}()
	return done
}

func (m *Manager) supervise(ctx context.Context, t Task) {
	defer t.State(false, nil)
	retry := t.MinRetry
	for {
		s, err := m.Session(ctx)
		if err != nil {
			return // ctx ended or the manager stopped
		}
		wasUp := false
		err = m.runTask(ctx, s, t, func() {
			wasUp = true
			retry = t.MinRetry
			t.State(true, nil)
			m.log.Info("AMQP task up", "task", t.Name, "broker", s.Broker)
		})
		if ctx.Err() != nil {
			return
		}
		select {
		case <-s.Done():
			// The connection went; the next one sets the task up at once.
			t.State(false, nil)
			continue
		default:
		}
		if err == nil {
			err = errors.New("channel closed")
		}
		t.State(false, err)
		if wasUp {
			m.log.Warn("AMQP task lost its channel; reopening it", "task", t.Name, "err", err, "in", retry)
		} else {
			m.log.Error("AMQP task down; the connection and everything else stay up", "task", t.Name, "err", err, "retry_in", retry)
		}
		select {
		case <-ctx.Done():
			return
		case <-s.Done():
		case <-time.After(jitter(retry)):
		}
		retry = min(retry*2, t.MaxRetry)
	}
}

func (m *Manager) runTask(ctx context.Context, s *Session, t Task, up func()) error {
	ch, err := s.Conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	return t.Run(ctx, s, ch, up)
}

// ServeDeliveries runs handle for every delivery in order until the channel
// that carries them closes, and returns why it closed (nil when it was closed
// on purpose or ctx ended).
func ServeDeliveries(ctx context.Context, ch *amqp.Channel, deliveries <-chan amqp.Delivery, handle func(amqp.Delivery)) error {
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				// The library closes deliveries after it told NotifyClose.
				select {
				case cerr := <-closed:
					if cerr != nil {
						return cerr
					}
				default:
				}
				return nil
			}
			handle(d)
		case <-ctx.Done():
			return nil
		}
	}
}
