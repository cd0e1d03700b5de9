// Package kazoo is sipside's AMQP bridge for routing scripts: a JSON-RPC server that
// OpenSIPS (jsonrpc module) and Kamailio (jsonrpcc, janssonrpcc, http_client) call to
// publish with broker confirms, to run a query with a correlated reply, and to ack
// consumed messages; and consumers that hand messages to the proxy (OpenSIPS MI
// raise_event, Kamailio evapi).
//
// Unlike Kamailio's kazoo module, a query's waiter is registered before the request is
// published, so an instant reply is never lost.
package kazoo

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"golang.org/x/sync/errgroup"

	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/internal/rabbit"
)

// Options are the non-config inputs of a Bridge.
type Options struct {
	Logger  *slog.Logger
	Metrics *metrics.Registry
	// Version is sent as App-Version in Kazoo mode.
	Version string
	// NewDeliverer builds the deliverer of a consume.deliver string; nil uses
	// DefaultDeliverer (OpenSIPS MI raise_event, Kamailio evapi).
	NewDeliverer func(target string, opts Options) (Deliverer, error)
	// Events receives the messages of consumers with deliver = "events", so that they
	// are re-dispatched like any proxy event (sipside run passes its evi pipeline).
	// params is a JSON object: {"body":…,"exchange":…,"routing_key":…[,"id":…]}.
	// A nil error means the event was taken (delivered or safely spooled).
	Events func(ctx context.Context, name string, params []byte) error
}

// Bridge is the running AMQP bridge.
type Bridge struct {
	cfg  Config
	opts Options
	log  *slog.Logger
	reg  *metrics.Registry

	mgr *rabbit.Manager
	pub *rabbit.Publisher
	req *rabbit.Requester // queries: no confirms, the reply confirms
	q   *querier

	consumers []*consumer
	acks      *ackTable
	disp      *dispatcher
	srv       *server
	running   atomic.Bool
}

// New checks cfg (after filling defaults) and builds the bridge; nothing connects
// until Run.
func New(cfg Config, opts Options) (*Bridge, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	opts.Metrics = metrics.OrNew(opts.Metrics)
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if opts.NewDeliverer == nil {
		opts.NewDeliverer = DefaultDeliverer
	}
	tlsCfg, err := loadTLS(cfg.AMQP)
	if err != nil {
		return nil, err
	}
	b := &Bridge{cfg: cfg, opts: opts, log: opts.Logger.With("component", "kazoo"), reg: opts.Metrics}
	b.mgr, err = rabbit.New(rabbit.Config{
		URLs:      cfg.AMQP.Brokers,
		Heartbeat: cfg.AMQP.Heartbeat.Std(),
		TLS:       tlsCfg,
		Name:      "kazoo",
		Logger:    opts.Logger,
		Metrics:   opts.Metrics,
	})
	if err != nil {
		return nil, err
	}
	b.q = newQuerier(b)
	b.acks = newAckTable(b.reg)
	for i, cc := range cfg.AMQP.Consume {
		d, err := opts.NewDeliverer(cc.Deliver, opts)
		if err != nil {
			return nil, fmt.Errorf("amqp.consume[%d].deliver: %w", i, err)
		}
		b.consumers = append(b.consumers, newConsumer(b, i, cc, d))
	}
	// Hooks are registered before the manager ever connects, so the first connection
	// already carries the publisher, the reply consumer and every consumer. Nothing is
	// connected yet, so the hooks cannot fail here.
	b.pub, err = b.mgr.NewPublisher(context.Background(), rabbit.PublisherOptions{Label: "kazoo"})
	if err != nil {
		return nil, err
	}
	ro := rabbit.RequesterOptions{OnReturn: b.q.onReturn}
	if !cfg.AMQP.Kazoo {
		ro.OnReply = b.q.onDirectReply
	}
	b.req, err = b.mgr.NewRequester(context.Background(), ro)
	if err != nil {
		return nil, err
	}
	b.disp = b.newDispatcher()
	if len(cfg.JSONRPC.Listen) > 0 {
		b.srv, err = newServer(b, cfg.JSONRPC)
		if err != nil {
			return nil, err
		}
	}
	return b, nil
}

func loadTLS(a AMQPConfig) (*tls.Config, error) {
	if a.TLSCA == "" && a.TLSCert == "" {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.TLSCA != "" {
		pem, err := os.ReadFile(a.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("amqp.tls_ca: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("amqp.tls_ca: %s holds no PEM certificate", a.TLSCA)
		}
	}
	if a.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(a.TLSCert, a.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("amqp.tls_cert/tls_key: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// Run connects to the broker, starts the consumers and the JSON-RPC listeners, and
// returns when ctx ends (nil) or a listener cannot start (error). Call it once.
func (b *Bridge) Run(ctx context.Context) error {
	if !b.running.CompareAndSwap(false, true) {
		return errors.New("kazoo: Run called twice; make a new Bridge")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	defer b.pub.Close()
	defer b.req.Close()
	if b.srv != nil {
		if err := b.srv.listen(); err != nil {
			return err
		}
		g.Go(func() error { return b.srv.serve(ctx) })
	}
	g.Go(func() error { return b.mgr.Run(ctx) })
	// Consumers and the Kazoo reply queue each run on a channel of their own:
	// one the broker refuses is down alone, while publishing goes on.
	if b.cfg.AMQP.Kazoo {
		done := b.mgr.Go(ctx, b.q.targetedTask())
		g.Go(func() error { <-done; return nil })
	}
	for _, c := range b.consumers {
		done := b.mgr.Go(ctx, c.task())
		g.Go(func() error { <-done; return nil })
	}
	g.Go(func() error { b.acks.expire(ctx); return nil })
	return g.Wait()
}

// Ready waits until the broker connection is up and every consumer has been
// set up once, successfully or not (Consumers says which are down).
func (b *Bridge) Ready(ctx context.Context) error {
	if _, err := b.mgr.Session(ctx); err != nil {
		return err
	}
	for _, c := range b.consumers {
		select {
		case <-c.tried:
		case <-ctx.Done():
			return fmt.Errorf("consumer %s not set up yet: %w", c.name, context.Cause(ctx))
		}
	}
	if b.q.targetedTried != nil {
		select {
		case <-b.q.targetedTried:
		case <-ctx.Done():
			return fmt.Errorf("kazoo reply queue not set up yet: %w", context.Cause(ctx))
		}
	}
	return nil
}

// ConsumerState is one consumer as /readyz and the status page show it.
type ConsumerState struct {
	Name  string
	Queue string // the queue consumed now ("" before the first setup)
	Up    bool
	Err   error // why it is down; nil while up or before the first attempt
}

// Consumers reports every configured consumer, in config order.
func (b *Bridge) Consumers() []ConsumerState {
	out := make([]ConsumerState, 0, len(b.consumers))
	for _, c := range b.consumers {
		up, err := c.state()
		out = append(out, ConsumerState{Name: c.name, Queue: c.queue.Load().(string), Up: up, Err: err})
	}
	return out
}

// Connected reports whether a broker connection is up now.
func (b *Bridge) Connected() bool { return b.mgr.Current() != nil }

// LastError says why the latest broker connection attempt failed, or nil.
func (b *Bridge) LastError() error { return b.mgr.LastError() }

// Addrs returns the JSON-RPC listeners' actual addresses by kind (useful with port 0).
func (b *Bridge) Addrs() map[string]string {
	if b.srv == nil {
		return nil
	}
	return b.srv.addrs()
}

// PublishRequest is one amqp.publish.
type PublishRequest struct {
	Exchange, RoutingKey string
	Body                 []byte
	ContentType          string
	Headers              amqp.Table
	Persistent           bool
}

// Publish sends r and returns once the broker confirmed it. In Kazoo mode a JSON
// object body gets Msg-ID, Server-ID, Node, App-Name and App-Version, and the Msg-ID is
// returned.
func (b *Bridge) Publish(ctx context.Context, r PublishRequest) (msgID string, err error) {
	body := r.Body
	if b.cfg.AMQP.Kazoo {
		body, msgID, err = b.q.kazooFields(body)
		if err != nil {
			return "", err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.AMQP.PublishTimeout.Std())
	defer cancel()
	return msgID, b.pub.Publish(ctx, r.Exchange, r.RoutingKey, publishing(r, body))
}

func publishing(r PublishRequest, body []byte) amqp.Publishing {
	p := amqp.Publishing{ContentType: r.ContentType, Headers: r.Headers, Body: body, Timestamp: time.Now()}
	if p.ContentType == "" {
		p.ContentType = "application/json"
	}
	if r.Persistent {
		p.DeliveryMode = amqp.Persistent
	}
	return p
}

// newUUID returns a random (version 4) UUID, the form Kazoo uses for Msg-ID.
func newUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	const hex = "0123456789abcdef"
	b := make([]byte, 0, 36)
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b = append(b, '-')
		}
		b = append(b, hex[c>>4], hex[c&0xf])
	}
	return string(b)
}
