package evi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/internal/rabbit"
)

func init() { backendSchemes["rabbitmq"] = newRabbitMQBackend }

// rabbitmqBackend publishes each event to RabbitMQ as OpenSIPS's
// event_rabbitmq does: the JSON-RPC notification as the body, no other AMQP
// properties, to the exchange and routing key of the socket string, on vhost
// "/". Unlike the module it always marks messages persistent, waits for the
// broker's publisher confirm (success means the broker took the message),
// and counts an unroutable message (returned) as a failure rather than
// dropping it silently.
//
// The connection is opened on the first event and kept; internal/rabbit
// rebuilds it with backoff after a broker restart. While it is down, Deliver
// fails at once instead of waiting, so that a virtual subscriber can move on
// and the route's queue keeps moving.
type rabbitmqBackend struct {
	amqpURL   string // with the password
	shown     string // redacted socket string, for logs, errors and metrics
	exchange  string
	key       string
	tlsName   string // server name to verify when tls_domain= was given
	heartbeat time.Duration
	deps      Deps

	mu       sync.Mutex
	m        *rabbit.Manager
	pub      *rabbit.Publisher
	stop     context.CancelFunc
	done     chan struct{}
	closed   bool
	startErr error
}

// rabbitmqSocket is a parsed rabbitmq: socket string.
type rabbitmqSocket struct {
	user, pass string
	host       string
	port       int
	exchange   string
	key        string
	tlsDomain  string
	persistent bool
	heartbeat  int // seconds; 0 = internal/rabbit's default
}

// parseRabbitMQSocket parses what follows "rabbitmq:" as event_rabbitmq
// 3.6 does:
//
//	[user[:password]@]host[:port]/[params?]routing_key
//
// params is a ';' list of exchange=NAME, tls_domain=NAME and persistent
// (sipside adds heartbeat=SECONDS), and a bare word is the exchange, as the
// module's documentation and older releases write it (/exchange?key).
// Every part is %XX-unescaped. Defaults: guest/guest, port 5672 (5671 with
// TLS), exchange "" (the default exchange), vhost "/".
func parseRabbitMQSocket(rest string) (rabbitmqSocket, error) {
	s := rabbitmqSocket{user: "guest", pass: "guest"}
	authority, path, ok := strings.Cut(rest, "/")
	if !ok {
		return s, errors.New("rabbitmq: no '/': write rabbitmq:[USER[:PASSWORD]@]HOST[:PORT]/[exchange=NAME?]ROUTING_KEY")
	}
	if path == "" {
		return s, errors.New("rabbitmq: nothing after '/': give the routing key, e.g. rabbitmq:127.0.0.1/sipside")
	}
	hostport := authority
	if userinfo, hp, ok := strings.Cut(authority, "@"); ok {
		hostport = hp
		user, pass, hasPass := strings.Cut(userinfo, ":")
		var err error
		if s.user, err = unescapeRMQ("user", user); err != nil {
			return s, err
		}
		s.pass = ""
		if hasPass {
			if s.pass, err = unescapeRMQ("password", pass); err != nil {
				return s, err
			}
		}
		if s.user == "" {
			return s, errors.New("rabbitmq: empty user before '@'")
		}
	}
	host, port, hasPort := strings.Cut(hostport, ":")
	var err error
	if s.host, err = unescapeRMQ("host", host); err != nil {
		return s, err
	}
	if s.host == "" {
		return s, errors.New("rabbitmq: no host: write rabbitmq:[USER[:PASSWORD]@]HOST[:PORT]/ROUTING_KEY")
	}
	if strings.ContainsAny(s.host, "/?#[] ") {
		return s, fmt.Errorf("rabbitmq: bad host %q", s.host)
	}
	if hasPort {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return s, fmt.Errorf("rabbitmq: port %q is not a number from 1 to 65535", port)
		}
		s.port = n
	}
	params, key, hasParams := strings.Cut(path, "?")
	if !hasParams {
		key, params = path, ""
	}
	if s.key, err = unescapeRMQ("routing key", key); err != nil {
		return s, err
	}
	if params != "" {
		for _, p := range strings.Split(params, ";") {
			name, val, hasVal := strings.Cut(p, "=")
			switch {
			case name == "exchange" && hasVal && val != "":
				if s.exchange, err = unescapeRMQ("exchange", val); err != nil {
					return s, err
				}
			case name == "tls_domain" && hasVal && val != "":
				if s.tlsDomain, err = unescapeRMQ("tls_domain", val); err != nil {
					return s, err
				}
			case p == "persistent":
				s.persistent = true
			case name == "heartbeat" && hasVal:
				n, err := strconv.Atoi(val)
				if err != nil || n < 1 || n > 65535 {
					return s, fmt.Errorf("rabbitmq: heartbeat=%q: want seconds from 1 to 65535", val)
				}
				s.heartbeat = n
			case !hasVal && p != "":
				if s.exchange, err = unescapeRMQ("exchange", p); err != nil {
					return s, err
				}
			default:
				return s, fmt.Errorf("rabbitmq: unknown parameter %q before '?': want exchange=NAME, tls_domain=NAME, persistent or heartbeat=SECONDS, separated by ';'", p)
			}
		}
	}
	if s.port == 0 {
		s.port = 5672
		if s.tlsDomain != "" {
			s.port = 5671
		}
	}
	return s, nil
}

// redactRabbitMQ hides the password of a rabbitmq: socket string's rest, the
// way the module's parser finds it: between the first ':' and the first '@'
// before the first '/'. Everything else stays verbatim, so that a routing
// key holding '@' or ':' neither hides the host nor shows the password (it
// does with the generic Redact, which looks for the last '@').
func redactRabbitMQ(rest string) string {
	authority, _, _ := strings.Cut(rest, "/")
	at := strings.IndexByte(authority, '@')
	if at < 0 {
		return rest
	}
	colon := strings.IndexByte(authority[:at], ':')
	if colon < 0 {
		return rest
	}
	return rest[:colon+1] + "xxxxx" + rest[at:]
}

func unescapeRMQ(what, s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	u, err := url.PathUnescape(s)
	if err != nil {
		return "", fmt.Errorf("rabbitmq: %s: bad %%XX escape: %w", what, err)
	}
	return u, nil
}

// escapeRMQ %XX-escapes what would end a part of the socket string early.
func escapeRMQ(s string) string {
	const hex = "0123456789ABCDEF"
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("%:@/?;=#", c) >= 0 {
			if b == nil {
				b = append(make([]byte, 0, len(s)+8), s[:i]...)
			}
			b = append(b, '%', hex[c>>4], hex[c&15])
		} else if b != nil {
			b = append(b, c)
		}
	}
	if b == nil {
		return s
	}
	return string(b)
}

// URL is the amqp:// (or amqps://) URL of the broker, vhost "/".
func (s rabbitmqSocket) URL() string {
	u := amqp.URI{
		Scheme:   "amqp",
		Host:     s.host,
		Port:     s.port,
		Username: s.user,
		Password: s.pass,
		Vhost:    "/",
	}
	if s.tlsDomain != "" {
		u.Scheme = "amqps"
	}
	return u.String()
}

// String prints the socket back in the module's syntax, without the password.
func (s rabbitmqSocket) String() string {
	var b strings.Builder
	b.WriteString("rabbitmq:")
	b.WriteString(escapeRMQ(s.user))
	if s.pass != "" {
		b.WriteString(":xxxxx")
	}
	b.WriteString("@")
	b.WriteString(net.JoinHostPort(s.host, strconv.Itoa(s.port)))
	b.WriteString("/")
	var params []string
	if s.exchange != "" {
		params = append(params, "exchange="+escapeRMQ(s.exchange))
	}
	if s.tlsDomain != "" {
		params = append(params, "tls_domain="+escapeRMQ(s.tlsDomain))
	}
	if s.heartbeat != 0 {
		params = append(params, "heartbeat="+strconv.Itoa(s.heartbeat))
	}
	if params != nil {
		b.WriteString(strings.Join(params, ";"))
		b.WriteString("?")
	}
	b.WriteString(escapeRMQ(s.key))
	return b.String()
}

func newRabbitMQBackend(rest string, d Deps) (Backend, error) {
	s, err := parseRabbitMQSocket(rest)
	if err != nil {
		return nil, err
	}
	b := &rabbitmqBackend{
		amqpURL:   s.URL(),
		shown:     s.String(),
		exchange:  s.exchange,
		key:       s.key,
		heartbeat: time.Duration(s.heartbeat) * time.Second,
		deps:      d,
	}
	if s.tlsDomain != "" {
		b.tlsName = s.host
	}
	if _, err := amqp.ParseURI(b.amqpURL); err != nil {
		return nil, fmt.Errorf("rabbitmq: %w", err)
	}
	return b, nil
}

func (b *rabbitmqBackend) String() string { return b.shown }

// start builds the connection manager and publisher on first use; the
// factory must not dial, and `sipside check` never delivers.
func (b *rabbitmqBackend) start(ctx context.Context) (*rabbit.Publisher, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("rabbitmq %s: backend closed", b.shown)
	}
	if b.pub != nil || b.startErr != nil {
		return b.pub, b.startErr
	}
	cfg := rabbit.Config{
		URLs:      []string{b.amqpURL},
		Heartbeat: b.heartbeat,
		Name:      b.shown,
		Logger:    b.deps.Log,
		Metrics:   b.deps.Metrics,
		// A broker that is down is retried often enough to come back
		// quickly, rarely enough to stay quiet in the logs.
		MinBackoff: 200 * time.Millisecond,
		MaxBackoff: 5 * time.Second,
	}
	if b.tlsName != "" {
		cfg.TLS = &tls.Config{ServerName: b.tlsName, MinVersion: tls.VersionTLS12}
	}
	m, err := rabbit.New(cfg)
	if err != nil {
		b.startErr = fmt.Errorf("rabbitmq %s: %w", b.shown, err)
		return nil, b.startErr
	}
	pub, err := m.NewPublisher(ctx, rabbit.PublisherOptions{Label: "evi", FailFast: true})
	if err != nil {
		// Not connected yet, so nothing ran; an error here is unexpected.
		pub.Close()
		return nil, fmt.Errorf("rabbitmq %s: %w", b.shown, err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	b.m, b.pub, b.stop, b.done = m, pub, cancel, make(chan struct{})
	go func() {
		defer close(b.done)
		m.Run(runCtx)
	}()
	return pub, nil
}

func (b *rabbitmqBackend) Deliver(ctx context.Context, ev *Event) error {
	pub, err := b.start(ctx)
	if err != nil {
		return err
	}
	if err := b.connected(ctx); err != nil {
		return err
	}
	msg := amqp.Publishing{DeliveryMode: amqp.Persistent, Body: eventNotification(ev)}
	if err := pub.Publish(ctx, b.exchange, b.key, msg); err != nil {
		return fmt.Errorf("rabbitmq %s: %w", b.shown, err)
	}
	return nil
}

// Send is Deliver with the confirm awaited later: the router keeps a window
// of events in flight on the channel, in order, instead of one round trip
// to the broker per event.
func (b *rabbitmqBackend) Send(ctx context.Context, ev *Event) (wait func() error) {
	pub, err := b.start(ctx)
	if err == nil {
		err = b.connected(ctx)
	}
	if err != nil {
		return func() error { return err }
	}
	msg := amqp.Publishing{DeliveryMode: amqp.Persistent, Body: eventNotification(ev)}
	confirm := pub.Send(ctx, b.exchange, b.key, msg)
	return func() error {
		if err := confirm(); err != nil {
			return fmt.Errorf("rabbitmq %s: %w", b.shown, err)
		}
		return nil
	}
}

// connected fails at once while the broker connection is down, so that a
// dead broker costs the pipeline nothing but this error. Before the first
// round over the broker has ended it waits for that round, not for a
// connection: a refused connection is known at once, and only a broker
// whose network is silent costs the dial timeout.
func (b *rabbitmqBackend) connected(ctx context.Context) error {
	if s := b.m.Current(); s != nil {
		select {
		case <-s.Done():
		default:
			return nil
		}
	}
	if _, err := b.m.FirstSession(ctx); err != nil {
		return fmt.Errorf("rabbitmq %s: %w (reconnecting in the background; check that RabbitMQ runs and the credentials are right)", b.shown, err)
	}
	return nil
}

// Close stops the connection manager; a publish still waiting fails.
func (b *rabbitmqBackend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if b.pub == nil {
		return nil
	}
	b.pub.Close()
	b.stop()
	select {
	case <-b.done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("rabbitmq %s: connection did not close within 5s", b.shown)
	}
}
