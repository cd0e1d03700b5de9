package kazoo

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/internal/rabbit"
)

// Config is the [amqp] and [jsonrpc] part of sipside.toml.
type Config struct {
	AMQP    AMQPConfig    `toml:"amqp"`
	JSONRPC JSONRPCConfig `toml:"jsonrpc"`
}

// AMQPConfig is [amqp].
type AMQPConfig struct {
	// Brokers are tried in order; the first reachable one is used.
	Brokers []string `toml:"brokers"`
	// Heartbeat is the AMQP heartbeat interval (default 10s).
	Heartbeat config.Duration `toml:"heartbeat"`
	// Kazoo adds the fields Kazoo apps expect (Msg-ID, Server-ID, Node, App-Name,
	// App-Version) and takes query replies from the "targeted" exchange.
	Kazoo bool `toml:"kazoo"`
	// Node names this sipside in Kazoo messages (default sipside@HOSTNAME).
	Node string `toml:"node"`
	// QueryTimeout bounds amqp.query without timeout_ms (default 2s, as kazoo's module).
	QueryTimeout config.Duration `toml:"query_timeout"`
	// PublishTimeout bounds waiting for a broker confirm (default 5s).
	PublishTimeout config.Duration `toml:"publish_timeout"`
	// MaxQueryTimeout is the longest timeout_ms a query may ask for (default
	// 60s); more is refused as invalid params.
	MaxQueryTimeout config.Duration `toml:"max_query_timeout"`
	// MaxQueries caps queries waiting for a reply across all connections
	// (default 4096); more are refused at once (-32008).
	MaxQueries int `toml:"max_queries"`
	// Declare applies to what the bridge itself declares in Kazoo mode (the
	// "targeted" exchange): auto (default), passive or create, as for consumers.
	Declare string `toml:"declare"`
	// TLS for amqps:// brokers: CA bundle, client certificate and key (PEM files).
	TLSCA   string `toml:"tls_ca"`
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`

	Consume []ConsumeConfig `toml:"consume"`
}

// ConsumeConfig is one [[amqp.consume]].
type ConsumeConfig struct {
	// Name labels the consumer in metrics, logs and the status page; default its
	// queue, else EXCHANGE/ROUTING_KEY.
	Name         string   `toml:"name"`
	Exchange     string   `toml:"exchange"`      // "" = the default exchange (queue must exist or be named)
	ExchangeType string   `toml:"exchange_type"` // declared with this type; default topic
	RoutingKey   string   `toml:"routing_key"`
	RoutingKeys  []string `toml:"routing_keys"` // more keys bound to the same queue
	Queue        string   `toml:"queue"`        // "" = a server-named queue that lives as long as the connection
	Durable      bool     `toml:"durable"`      // exchange and named queue survive a broker restart
	// Declare: auto (default) uses the exchange and queue as they exist and
	// creates them with these settings only when missing; passive never
	// creates; create declares with these settings (a mismatch is an error).
	// amq.* exchanges are only ever checked.
	Declare string `toml:"declare"`
	// QueueType is the x-queue-type of a named queue sipside creates: classic
	// (default), quorum or stream. Quorum and stream queues must be durable.
	QueueType string `toml:"queue_type"`
	Prefetch  int    `toml:"prefetch"` // unacked messages in flight (default 50)
	// Ack is immediate (on receipt), delivered (once the proxy accepted it) or script
	// (when the routing script calls amqp.ack; nacked with requeue after AckTimeout).
	Ack        string          `toml:"ack"`
	AckTimeout config.Duration `toml:"ack_timeout"` // default 30s
	// Deliver is an mi target of OpenSIPS (raise_event), e.g. opensips:udp:127.0.0.1:8080,
	// evapi:HOST:PORT for Kamailio's evapi module, or "events" for sipside's own event
	// routes ([[route]]), as if the proxy had raised the event.
	Deliver string `toml:"deliver"`
	// Event is the OpenSIPS event raised, and the "event" member of evapi messages.
	Event string `toml:"event"`
}

// DisplayName is the consumer's name key, else its queue, else
// EXCHANGE/ROUTING_KEY.
func (cc ConsumeConfig) DisplayName() string {
	switch {
	case cc.Name != "":
		return cc.Name
	case cc.Queue != "":
		return cc.Queue
	}
	keys := cc.keys()
	return cc.Exchange + "/" + keys[0]
}

// keys is every routing key to bind, at least one ("" for fanout/headers).
func (cc ConsumeConfig) keys() []string {
	keys := cc.RoutingKeys
	if cc.RoutingKey != "" {
		keys = append([]string{cc.RoutingKey}, keys...)
	}
	if len(keys) == 0 {
		keys = []string{""}
	}
	return keys
}

// JSONRPCConfig is [jsonrpc].
type JSONRPCConfig struct {
	// Listen: tcp:HOST:PORT (raw JSON, OpenSIPS jsonrpc module), netstring:HOST:PORT
	// (Kamailio jsonrpcc/janssonrpcc), http://HOST:PORT (POST; Kamailio http_client, curl).
	Listen []string `toml:"listen"`
	// Allow lists the source networks that may connect (default loopback only).
	Allow []string `toml:"allow"`
	// MaxFrame caps one request in bytes (default 65536).
	MaxFrame int `toml:"max_frame"`
	// MaxConns caps concurrent connections per listener (default 512).
	MaxConns int `toml:"max_conns"`
}

// Ack modes.
const (
	AckImmediate = "immediate"
	AckDelivered = "delivered"
	AckScript    = "script"
)

// Defaults.
const (
	DefaultHeartbeat       = 10 * time.Second
	DefaultQueryTimeout    = 2 * time.Second
	DefaultPublishTimeout  = 5 * time.Second
	DefaultMaxQueryTimeout = 60 * time.Second
	DefaultMaxQueries      = 4096
	DefaultAckTimeout      = 30 * time.Second
	DefaultPrefetch        = 50
	DefaultMaxFrame        = 64 << 10
	DefaultMaxConns        = 512
)

// WithDefaults fills in every unset key.
func (c Config) WithDefaults() Config {
	a := &c.AMQP
	if a.Heartbeat == 0 {
		a.Heartbeat = config.Duration(DefaultHeartbeat)
	}
	if a.QueryTimeout == 0 {
		a.QueryTimeout = config.Duration(DefaultQueryTimeout)
	}
	if a.PublishTimeout == 0 {
		a.PublishTimeout = config.Duration(DefaultPublishTimeout)
	}
	if a.MaxQueryTimeout == 0 {
		a.MaxQueryTimeout = config.Duration(DefaultMaxQueryTimeout)
	}
	if a.MaxQueries == 0 {
		a.MaxQueries = DefaultMaxQueries
	}
	if a.Declare == "" {
		a.Declare = string(rabbit.DeclareAuto)
	}
	if a.Node == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		a.Node = "sipside@" + h
	}
	consume := make([]ConsumeConfig, len(a.Consume))
	for i, cc := range a.Consume {
		consume[i] = cc.WithDefaults()
	}
	a.Consume = consume
	j := &c.JSONRPC
	if len(j.Allow) == 0 {
		j.Allow = []string{"127.0.0.0/8", "::1/128"}
	}
	if j.MaxFrame == 0 {
		j.MaxFrame = DefaultMaxFrame
	}
	if j.MaxConns == 0 {
		j.MaxConns = DefaultMaxConns
	}
	return c
}

// WithDefaults fills in every unset key of one [[amqp.consume]].
func (cc ConsumeConfig) WithDefaults() ConsumeConfig {
	if cc.ExchangeType == "" {
		cc.ExchangeType = "topic"
	}
	if cc.Prefetch == 0 {
		cc.Prefetch = DefaultPrefetch
	}
	if cc.Ack == "" {
		cc.Ack = AckDelivered
	}
	if cc.AckTimeout == 0 {
		cc.AckTimeout = config.Duration(DefaultAckTimeout)
	}
	if cc.Declare == "" {
		cc.Declare = string(rabbit.DeclareAuto)
	}
	if cc.QueueType == "" {
		cc.QueueType = rabbit.QueueClassic
	}
	return cc
}

// Enabled reports whether the bridge has anything to do: brokers to use.
func (c *Config) Enabled() bool { return len(c.AMQP.Brokers) > 0 }

// Validate is Check as one error.
func (c Config) Validate() error {
	var p config.Problems
	c.Check(&p)
	return p.Err()
}

// Check reports every problem of [amqp], [[amqp.consume]] and [jsonrpc] at
// once, under their keys ("amqp.consume[1].ack").
func (c Config) Check(p *config.Problems) {
	c = c.WithDefaults()
	a, ap := c.AMQP, p.At("amqp")
	if len(a.Brokers) == 0 && (len(a.Consume) > 0 || len(c.JSONRPC.Listen) > 0) {
		ap.Add("brokers", `empty, but [jsonrpc] or [[amqp.consume]] needs a broker; add e.g. brokers = ["amqp://guest:guest@127.0.0.1:5672/"]`)
	}
	for i, b := range a.Brokers {
		if _, err := amqp.ParseURI(b); err != nil {
			ap.Add(fmt.Sprintf("brokers[%d]", i), "%v (want amqp://user:pw@host:port/vhost or amqps://…)", err)
		}
	}
	for key, d := range map[string]config.Duration{"heartbeat": a.Heartbeat, "query_timeout": a.QueryTimeout, "publish_timeout": a.PublishTimeout, "max_query_timeout": a.MaxQueryTimeout} {
		if d < 0 {
			ap.Add(key, "%v: must not be negative", d)
		}
	}
	if a.QueryTimeout > a.MaxQueryTimeout {
		ap.Add("query_timeout", "%v is above max_query_timeout (%v): raise max_query_timeout or lower query_timeout", a.QueryTimeout, a.MaxQueryTimeout)
	}
	if a.MaxQueries < 1 || a.MaxQueries > 1<<20 {
		ap.Add("max_queries", "%d: want 1..1048576 queries in flight", a.MaxQueries)
	}
	if (a.TLSCert == "") != (a.TLSKey == "") {
		ap.Add("tls_cert", "give tls_cert and tls_key both, or neither")
	}
	if _, err := rabbit.ParseDeclareMode(a.Declare); err != nil {
		ap.AddErr("declare", err)
	}
	names := make(map[string]int, len(a.Consume))
	for i, cc := range a.Consume {
		cp := ap.Index("consume", i)
		cc.Check(cp)
		if j, dup := names[cc.DisplayName()]; dup {
			cp.Add("name", "%q is also amqp.consume[%d]'s name: give each consumer its own name", cc.DisplayName(), j)
		}
		names[cc.DisplayName()] = i
	}
	j, jp := c.JSONRPC, p.At("jsonrpc")
	for i, l := range j.Listen {
		if _, _, err := ParseListen(l); err != nil {
			jp.AddErr(fmt.Sprintf("listen[%d]", i), err)
		}
	}
	for i, a := range j.Allow {
		if _, err := parseAllow(a); err != nil {
			jp.AddErr(fmt.Sprintf("allow[%d]", i), err)
		}
	}
	if j.MaxFrame < 256 || j.MaxFrame > 16<<20 {
		jp.Add("max_frame", "%d: want 256..16777216 bytes", j.MaxFrame)
	}
	if j.MaxConns < 1 {
		jp.Add("max_conns", "%d: want at least 1", j.MaxConns)
	}
}

// Check reports what is wrong with one [[amqp.consume]] (keys relative to p).
func (cc ConsumeConfig) Check(p *config.Problems) {
	cc = cc.WithDefaults()
	if _, err := rabbit.ParseDeclareMode(cc.Declare); err != nil {
		p.AddErr("declare", err)
	}
	if err := rabbit.CheckQueue(rabbit.Queue{Name: cc.Queue, Type: cc.QueueType, Durable: cc.Durable,
		Exclusive: cc.Queue == "", AutoDelete: cc.Queue == ""}); err != nil {
		p.AddErr("queue_type", err)
	}
	if cc.QueueType == rabbit.QueueStream && cc.Ack == AckImmediate {
		p.Add("ack", `a stream queue needs acks: use ack = "delivered" or "script"`)
	}
	switch cc.Ack {
	case AckImmediate, AckDelivered, AckScript:
	default:
		p.Add("ack", "%q: want immediate, delivered or script", cc.Ack)
	}
	switch cc.ExchangeType {
	case "direct", "topic", "fanout", "headers":
	default:
		p.Add("exchange_type", "%q: want direct, topic, fanout or headers", cc.ExchangeType)
	}
	if cc.Exchange == "" && cc.Queue == "" {
		p.Add("exchange", "give an exchange to bind to, or the queue to consume")
	}
	if cc.Exchange != "" && cc.RoutingKey == "" && len(cc.RoutingKeys) == 0 && cc.ExchangeType != "fanout" && cc.ExchangeType != "headers" {
		p.Add("routing_key", "empty; give the key (topic patterns like route.req.# work)")
	}
	if cc.Prefetch < 0 || cc.Prefetch > 65535 {
		p.Add("prefetch", "%d: want 0..65535", cc.Prefetch)
	}
	if cc.AckTimeout < 0 {
		p.Add("ack_timeout", "%v: must not be negative", cc.AckTimeout)
	}
	if cc.Deliver == "" {
		p.Add("deliver", "empty; give an OpenSIPS mi target (opensips:udp:127.0.0.1:8080) or evapi:HOST:PORT")
	} else if err := checkDeliver(cc.Deliver); err != nil {
		p.AddErr("deliver", err)
	}
	if cc.Event == "" && (strings.HasPrefix(cc.Deliver, "opensips:") || cc.Deliver == DeliverEvents) {
		p.Add("event", "empty; name the event to raise, e.g. E_AMQP_ROUTE_REQ")
	}
}

func checkDeliver(s string) error {
	switch {
	case s == DeliverEvents:
	case strings.HasPrefix(s, "evapi:"):
		if _, _, err := net.SplitHostPort(strings.TrimPrefix(s, "evapi:")); err != nil {
			return fmt.Errorf("%q: want evapi:HOST:PORT, e.g. evapi:127.0.0.1:8448", s)
		}
	case strings.HasPrefix(s, "opensips:"):
	case strings.HasPrefix(s, "kamailio:"):
		return fmt.Errorf("%q: Kamailio has no raise_event; use evapi:HOST:PORT (modparam evapi bind_addr)", s)
	default:
		return fmt.Errorf("%q: want opensips:… (an mi target), evapi:HOST:PORT or events", s)
	}
	return nil
}

// DeliverEvents hands consumed messages to sipside's own event routes.
const DeliverEvents = "events"

// Listener kinds.
const (
	ListenTCP       = "tcp"
	ListenNetstring = "netstring"
	ListenHTTP      = "http"
)

// ParseListen splits a jsonrpc.listen entry into its kind and HOST:PORT.
func ParseListen(s string) (kind, addr string, err error) {
	switch {
	case strings.HasPrefix(s, "tcp:"):
		kind, addr = ListenTCP, strings.TrimPrefix(s, "tcp:")
	case strings.HasPrefix(s, "netstring:"):
		kind, addr = ListenNetstring, strings.TrimPrefix(s, "netstring:")
	case strings.HasPrefix(s, "http://"):
		u, err := url.Parse(s)
		if err != nil {
			return "", "", fmt.Errorf("%q: %v", s, err)
		}
		kind, addr = ListenHTTP, u.Host
	default:
		return "", "", fmt.Errorf("%q: want tcp:HOST:PORT, netstring:HOST:PORT or http://HOST:PORT", s)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", "", fmt.Errorf("%q: address %q: want HOST:PORT", s, addr)
	}
	return kind, addr, nil
}

func parseAllow(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("%q: want a network such as 127.0.0.0/8 or an address", s)
}
