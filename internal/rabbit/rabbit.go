// Package rabbit keeps one AMQP 0-9-1 connection to the first reachable broker of an
// ordered list, and a publisher whose Publish returns only once the broker has taken
// responsibility for the message.
//
// Both the kazoo bridge and the evi RabbitMQ backend sit on it, so the hard parts live
// once: failover with backoff, re-declaring topology after every reconnect, and telling
// each publisher the truth about its message when the connection dies under it.
//
// The library's own automatic recovery (amqp.Config.Recovery) stays off: it re-plays
// topology it recorded, while we want the owners of the topology to re-declare it
// (they know what must exist) and in-flight publishes to fail loudly instead of being
// silently re-sent.
package rabbit

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/internal/metrics"
)

// Errors a caller can test with errors.Is.
var (
	// ErrClosed: the manager's Run has ended.
	ErrClosed = errors.New("rabbit: connection manager stopped")
	// ErrNotConnected: no broker connection came up before the context ended.
	ErrNotConnected = errors.New("rabbit: no broker connection")
	// ErrUnconfirmed: the connection or channel died after the message was sent and
	// before the broker confirmed it; the broker may or may not have routed it.
	ErrUnconfirmed = errors.New("rabbit: connection lost before the broker confirmed the message")
	// ErrNacked: the broker refused responsibility for the message (basic.nack).
	ErrNacked = errors.New("rabbit: broker nacked the message")
	// ErrReturned: the message reached the exchange but no queue is bound for its routing key.
	ErrReturned = errors.New("rabbit: message returned as unroutable")
	// ErrNoExchange: the exchange does not exist on the broker.
	ErrNoExchange = errors.New("rabbit: exchange does not exist")
)

// Config says where and how to connect. The zero value of every field but URLs is usable.
type Config struct {
	// URLs are tried in order on every (re)connect: amqp://user:pw@host:port/vhost or amqps://….
	URLs []string
	// Heartbeat is the AMQP heartbeat interval; 0 means 10s. A dead broker is detected
	// after about three missed heartbeats.
	Heartbeat time.Duration
	// TLS is used for amqps:// URLs; nil means the system roots and the URL's host name.
	TLS *tls.Config
	// DialTimeout bounds TCP connect plus the TLS and AMQP handshakes per URL; 0 means 5s.
	DialTimeout time.Duration
	// MinBackoff and MaxBackoff bound the pause between rounds over the whole list
	// (0 means 100ms and 10s). The first round after a lost connection starts at once.
	MinBackoff, MaxBackoff time.Duration
	// Name labels metrics and is sent as the AMQP connection_name, so that
	// `rabbitmqctl list_connections client_properties` shows who is who.
	Name    string
	Logger  *slog.Logger
	Metrics *metrics.Registry
}

// Hook runs on every new connection, in registration order, before the connection is
// offered to publishers. It declares what must exist and starts consumers. An error
// closes the connection and counts as a failed connect, so broken topology is retried
// with backoff and logged instead of leaving a half-set-up connection.
type Hook func(ctx context.Context, conn *amqp.Connection) error

// Manager owns the connection. Create it with New and drive it with Run.
type Manager struct {
	cfg Config
	log *slog.Logger

	hookMu sync.Mutex // serialises hook registration with hook runs on a new connection
	hooks  []*hookEntry

	mu      sync.Mutex
	sess    *Session      // nil while disconnected
	setup   *Session      // the session whose hooks are running
	ready   chan struct{} // closed when sess becomes non-nil; replaced when it goes nil
	stopped bool
	lastErr error // why the latest connect attempt failed

	// attempted is closed once the first round over the broker list has ended,
	// connected or not: a caller that must not wait for a broker that is not
	// there (a CLI, a FAILOVER member) waits for this, not for a connection.
	attempted     chan struct{}
	attemptedOnce sync.Once

	m managerMetrics
}

type hookEntry struct{ fn Hook }

// Session is one live connection. It is handed to hooks and to waiters; it is over when
// Done is closed.
type Session struct {
	Conn   *amqp.Connection
	Broker string // URL without the password
	done   chan struct{}

	blockMu sync.Mutex
	blocked chan struct{} // non-nil and open while the broker has blocked publishing
}

// Done is closed when the connection is lost or closed.
func (s *Session) Done() <-chan struct{} { return s.done }

// unblocked returns a channel that is closed when the broker lets publishers send.
func (s *Session) unblocked() <-chan struct{} {
	s.blockMu.Lock()
	defer s.blockMu.Unlock()
	if s.blocked == nil {
		return closedChan
	}
	return s.blocked
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

type managerMetrics struct {
	connected *metrics.GaugeVec
	connects  *metrics.CounterVec
	hookErrs  *metrics.Counter
	blocked   *metrics.Gauge
}

// New checks the configuration and returns an idle manager; nothing is dialled until Run.
func New(cfg Config) (*Manager, error) {
	if len(cfg.URLs) == 0 {
		return nil, errors.New("rabbit: no broker URLs; give at least one amqp://user:pw@host:port/vhost")
	}
	for i, u := range cfg.URLs {
		if _, err := amqp.ParseURI(u); err != nil {
			return nil, fmt.Errorf("rabbit: broker %d %q: %w (want amqp://user:pw@host:port/vhost or amqps://…)", i+1, Redact(u), err)
		}
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 10 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	if cfg.Name == "" {
		cfg.Name = "sipside"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	reg := metrics.OrNew(cfg.Metrics)
	cfg.Metrics = reg
	m := &Manager{
		cfg:       cfg,
		log:       cfg.Logger.With("amqp", cfg.Name),
		ready:     make(chan struct{}),
		attempted: make(chan struct{}),
	}
	m.m = managerMetrics{
		connected: reg.Gauge("sipside_amqp_connected", "1 while connected to this broker.", "name", "broker"),
		connects:  reg.Counter("sipside_amqp_connects_total", "Connection attempts by result (ok, dial_error, setup_error).", "name", "broker", "result"),
		hookErrs:  reg.Counter("sipside_amqp_setup_errors_total", "Topology/consumer setup failures after connecting.", "name").With(cfg.Name),
		blocked:   reg.Gauge("sipside_amqp_blocked", "1 while the broker blocks publishing (resource alarm).", "name").With(cfg.Name),
	}
	// Every broker has its connected series from the start, at 0: a broker
	// that was never reachable must show as down, not as absent, or an
	// alert on the gauge cannot see it.
	for _, u := range cfg.URLs {
		m.m.connected.With(cfg.Name, Redact(u)).Set(0)
	}
	return m, nil
}

// Name is the configured name.
func (m *Manager) Name() string { return m.cfg.Name }

// Metrics is the registry the manager counts into.
func (m *Manager) Metrics() *metrics.Registry { return m.cfg.Metrics }

// Logger is the manager's logger.
func (m *Manager) Logger() *slog.Logger { return m.log }

// OnConnect registers fn to run on every new connection; if a connection is up now, fn
// runs on it before OnConnect returns (its error is returned and the hook stays
// registered). fn must not call OnConnect. The returned func unregisters it.
func (m *Manager) OnConnect(ctx context.Context, fn Hook) (remove func(), err error) {
	e := &hookEntry{fn: fn}
	m.hookMu.Lock()
	defer m.hookMu.Unlock()
	m.hooks = append(m.hooks, e)
	remove = func() {
		m.hookMu.Lock()
		defer m.hookMu.Unlock()
		for i, h := range m.hooks {
			if h == e {
				m.hooks = append(m.hooks[:i:i], m.hooks[i+1:]...)
				return
			}
		}
	}
	if s := m.Current(); s != nil {
		err = fn(ctx, s.Conn)
	}
	return remove, err
}

func (m *Manager) setLastErr(err error) {
	m.mu.Lock()
	m.lastErr = err
	m.mu.Unlock()
}

// LastError returns why the latest connection attempt failed (nil if it worked), for
// messages such as "cannot reach the broker: dial tcp …: connection refused".
func (m *Manager) LastError() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lastErr
}

// live reports whether the manager holds a connection that has not died.
func (m *Manager) live() bool {
	s := m.Current()
	if s == nil {
		return false
	}
	select {
	case <-s.Done():
		return false
	default:
		return true
	}
}

// Current returns the live session, or nil.
func (m *Manager) Current() *Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sess
}

// Session waits for a live connection until ctx ends.
func (m *Manager) Session(ctx context.Context) (*Session, error) {
	for {
		m.mu.Lock()
		s, ready, stopped := m.sess, m.ready, m.stopped
		m.mu.Unlock()
		if s != nil {
			select {
			case <-s.done:
				// Lost but not yet cleared by Run; wait for the next one.
			default:
				return s, nil
			}
		} else if stopped {
			return nil, ErrClosed
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrNotConnected, context.Cause(ctx))
		case <-time.After(50 * time.Millisecond): // also re-checks a session that just died
		}
	}
}

// Run connects and stays connected until ctx ends, then closes the connection and
// returns nil. It returns an error only when no URL can ever work (none today: every
// failure is retried, because brokers come back).
func (m *Manager) Run(ctx context.Context) error {
	defer func() {
		m.mu.Lock()
		m.stopped = true
		m.mu.Unlock()
	}()
	defer m.markAttempted()
	backoff := m.cfg.MinBackoff
	for {
		s := m.connectRound(ctx)
		m.markAttempted()
		if ctx.Err() != nil {
			if s != nil {
				s.Conn.Close()
			}
			return nil
		}
		if s == nil {
			d := jitter(backoff)
			m.log.Warn("no AMQP broker reachable; retrying", "in", d.Round(time.Millisecond), "brokers", len(m.cfg.URLs))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(d):
			}
			backoff = min(backoff*2, m.cfg.MaxBackoff)
			continue
		}
		up := time.Now()
		m.serve(ctx, s)
		if ctx.Err() != nil {
			return nil
		}
		// A connection that lived long is a healthy one: start over quickly. One that
		// dies right after connecting keeps the backoff growing, so a broker that
		// accepts and then kills us is not hammered.
		if time.Since(up) > m.cfg.MaxBackoff {
			backoff = m.cfg.MinBackoff
		} else {
			d := jitter(backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(d):
			}
			backoff = min(backoff*2, m.cfg.MaxBackoff)
		}
	}
}

func (m *Manager) markAttempted() { m.attemptedOnce.Do(func() { close(m.attempted) }) }

// Attempted is closed once Run has tried every broker of the list once (or
// ended). After it, Current() == nil means no broker answered: a refused
// connection is known at once, without waiting for a deadline.
func (m *Manager) Attempted() <-chan struct{} { return m.attempted }

// FirstSession waits for the first round over the broker list and returns the
// live session, or an error saying why none came up (LastError). Unlike
// Session it does not wait through backoff for a broker that is down.
func (m *Manager) FirstSession(ctx context.Context) (*Session, error) {
	select {
	case <-m.attempted:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", ErrNotConnected, context.Cause(ctx))
	}
	if s := m.Current(); s != nil {
		return s, nil
	}
	if err := m.LastError(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotConnected, err)
	}
	return nil, ErrNotConnected
}

func jitter(d time.Duration) time.Duration {
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// connectRound tries every URL once in order and returns the first session whose hooks
// all succeeded.
func (m *Manager) connectRound(ctx context.Context) *Session {
	for _, u := range m.cfg.URLs {
		if ctx.Err() != nil {
			return nil
		}
		broker := Redact(u)
		conn, err := m.dial(u)
		if err != nil {
			m.setLastErr(fmt.Errorf("%s: %w", broker, err))
			m.m.connects.With(m.cfg.Name, broker, "dial_error").Inc()
			m.log.Warn("AMQP connect failed", "broker", broker, "err", err)
			continue
		}
		s := &Session{Conn: conn, Broker: broker, done: make(chan struct{})}
		closeCh := conn.NotifyClose(make(chan *amqp.Error, 1))
		blockCh := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
		go m.watch(s, closeCh, blockCh)
		if err := m.runHooks(ctx, s); err != nil {
			m.setLastErr(fmt.Errorf("%s: setup: %w", broker, err))
			m.m.connects.With(m.cfg.Name, broker, "setup_error").Inc()
			m.m.hookErrs.Inc()
			m.log.Error("AMQP setup after connect failed; dropping the connection", "broker", broker, "err", err)
			conn.Close()
			<-s.done
			continue
		}
		m.setLastErr(nil)
		m.m.connects.With(m.cfg.Name, broker, "ok").Inc()
		m.log.Info("AMQP connected", "broker", broker)
		return s
	}
	return nil
}

func (m *Manager) dial(u string) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(m.cfg.Name)
	cfg := amqp.Config{
		Heartbeat:  m.cfg.Heartbeat,
		Properties: props,
		Locale:     "en_US",
		Dial:       amqp.DefaultDial(m.cfg.DialTimeout),
	}
	if strings.HasPrefix(u, "amqps://") {
		cfg.TLSClientConfig = m.cfg.TLS
		if cfg.TLSClientConfig == nil {
			cfg.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
	}
	return amqp.DialConfig(u, cfg)
}

func (m *Manager) runHooks(ctx context.Context, s *Session) error {
	m.hookMu.Lock()
	defer m.hookMu.Unlock()
	m.mu.Lock()
	m.setup = s
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.setup = nil
		m.mu.Unlock()
	}()
	for _, h := range m.hooks {
		if err := h.fn(ctx, s.Conn); err != nil {
			return err
		}
	}
	// Publish the session while still holding hookMu, so a concurrent OnConnect either
	// ran in the loop above or sees this session and runs its hook itself.
	m.mu.Lock()
	m.sess = s
	close(m.ready)
	m.mu.Unlock()
	return nil
}

// watch closes s.done when the connection ends and tracks connection.blocked.
func (m *Manager) watch(s *Session, closeCh <-chan *amqp.Error, blockCh <-chan amqp.Blocking) {
	for {
		select {
		case err, ok := <-closeCh:
			if ok && err != nil {
				m.log.Warn("AMQP connection lost", "broker", s.Broker, "err", err)
			}
			s.blockMu.Lock()
			if s.blocked != nil {
				close(s.blocked)
				s.blocked = nil
			}
			s.blockMu.Unlock()
			m.m.blocked.Set(0)
			close(s.done)
			return
		case b, ok := <-blockCh:
			if !ok {
				blockCh = nil
				continue
			}
			s.blockMu.Lock()
			if b.Active && s.blocked == nil {
				s.blocked = make(chan struct{})
				m.m.blocked.Set(1)
				m.log.Warn("AMQP broker blocks publishing", "broker", s.Broker, "reason", b.Reason)
			} else if !b.Active && s.blocked != nil {
				close(s.blocked)
				s.blocked = nil
				m.m.blocked.Set(0)
				m.log.Info("AMQP broker unblocked publishing", "broker", s.Broker)
			}
			s.blockMu.Unlock()
		}
	}
}

// serve holds the session until it dies or ctx ends.
func (m *Manager) serve(ctx context.Context, s *Session) {
	g := m.m.connected.With(m.cfg.Name, s.Broker)
	g.Set(1)
	defer g.Set(0)
	select {
	case <-ctx.Done():
		s.Conn.Close()
		<-s.done
	case <-s.done:
	}
	m.mu.Lock()
	m.sess = nil
	m.ready = make(chan struct{})
	m.mu.Unlock()
}

// Redact returns u without its password, for logs and metric labels.
func Redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	if p.User != nil {
		p.User = url.User(p.User.Username())
	}
	return p.String()
}

// IsConnRefused reports whether err means nothing listens at the broker address; the
// CLI uses it to say "is RabbitMQ running?" rather than a raw dial error.
func IsConnRefused(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}
