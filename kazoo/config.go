package kazoo

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

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
	Heartbeat Duration `toml:"heartbeat"`
	// Kazoo adds the fields Kazoo apps expect (Msg-ID, Server-ID, Node, App-Name,
	// App-Version) and takes query replies from the "targeted" exchange.
	Kazoo bool `toml:"kazoo"`
	// Node names this sipside in Kazoo messages (default sipside@HOSTNAME).
	Node string `toml:"node"`
	// QueryTimeout bounds amqp.query without timeout_ms (default 2s, as kazoo's module).
	QueryTimeout Duration `toml:"query_timeout"`
	// PublishTimeout bounds waiting for a broker confirm (default 5s).
	PublishTimeout Duration `toml:"publish_timeout"`
	// MaxQueryTimeout is the longest timeout_ms a query may ask for (default
	// 60s); more is refused as invalid params.
	MaxQueryTimeout Duration `toml:"max_query_timeout"`
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
	Ack        string   `toml:"ack"`
	AckTimeout Duration `toml:"ack_timeout"` // default 30s
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

// Duration is a time.Duration written in TOML as a string such as "10s".
type Duration time.Duration

// UnmarshalText parses "500ms", "10s", "2m".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration: write e.g. \"500ms\" or \"10s\"", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration as Go prints it.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Std is the duration as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

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

// SetDefaults fills every unset key.
func (c *Config) SetDefaults() {
	a := &c.AMQP
	if a.Heartbeat == 0 {
		a.Heartbeat = Duration(DefaultHeartbeat)
	}
	if a.QueryTimeout == 0 {
		a.QueryTimeout = Duration(DefaultQueryTimeout)
	}
	if a.PublishTimeout == 0 {
		a.PublishTimeout = Duration(DefaultPublishTimeout)
	}
	if a.MaxQueryTimeout == 0 {
		a.MaxQueryTimeout = Duration(DefaultMaxQueryTimeout)
	}
	if a.MaxQueries == 0 {
		a.MaxQueries = DefaultMaxQueries
	}
	if a.Node == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		a.Node = "sipside@" + h
	}
	for i := range a.Consume {
		cc := &a.Consume[i]
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
			cc.AckTimeout = Duration(DefaultAckTimeout)
		}
	}
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
}

// Enabled reports whether the bridge has anything to do: brokers to use.
func (c *Config) Enabled() bool { return len(c.AMQP.Brokers) > 0 }

// Validate checks every key and names the bad one, e.g. "amqp.consume[1].ack: …".
// Call SetDefaults first.
func (c *Config) Validate() error {
	a := c.AMQP
	if len(a.Brokers) == 0 && (len(a.Consume) > 0 || len(c.JSONRPC.Listen) > 0) {
		return errors.New(`amqp.brokers: empty, but [jsonrpc] or [[amqp.consume]] needs a broker; add e.g. brokers = ["amqp://guest:guest@127.0.0.1:5672/"]`)
	}
	for i, b := range a.Brokers {
		if _, err := amqp.ParseURI(b); err != nil {
			return fmt.Errorf("amqp.brokers[%d]: %v (want amqp://user:pw@host:port/vhost or amqps://…)", i, err)
		}
	}
	if a.Heartbeat < 0 || a.QueryTimeout < 0 || a.PublishTimeout < 0 || a.MaxQueryTimeout < 0 {
		return errors.New("amqp: heartbeat, query_timeout, publish_timeout and max_query_timeout must not be negative")
	}
	if a.QueryTimeout > a.MaxQueryTimeout {
		return fmt.Errorf("amqp.query_timeout: %v is above amqp.max_query_timeout (%v): raise max_query_timeout or lower query_timeout", a.QueryTimeout.Std(), a.MaxQueryTimeout.Std())
	}
	if a.MaxQueries < 1 || a.MaxQueries > 1<<20 {
		return fmt.Errorf("amqp.max_queries: %d: want 1..1048576 queries in flight", a.MaxQueries)
	}
	if (a.TLSCert == "") != (a.TLSKey == "") {
		return errors.New("amqp.tls_cert and amqp.tls_key: give both or neither")
	}
	if _, err := rabbit.ParseDeclareMode(a.Declare); err != nil {
		return fmt.Errorf("amqp.declare: %w", err)
	}
	names := make(map[string]int, len(a.Consume))
	for i, cc := range a.Consume {
		key := fmt.Sprintf("amqp.consume[%d]", i)
		if _, err := rabbit.ParseDeclareMode(cc.Declare); err != nil {
			return fmt.Errorf("%s.declare: %w", key, err)
		}
		if err := rabbit.CheckQueue(rabbit.Queue{Name: cc.Queue, Type: cc.QueueType, Durable: cc.Durable,
			Exclusive: cc.Queue == "", AutoDelete: cc.Queue == ""}); err != nil {
			return fmt.Errorf("%s.queue_type: %w", key, err)
		}
		if cc.QueueType == rabbit.QueueStream && cc.Ack == AckImmediate {
			return fmt.Errorf("%s.ack: a stream queue needs acks: use ack = \"delivered\" or \"script\"", key)
		}
		if j, dup := names[cc.DisplayName()]; dup {
			return fmt.Errorf("%s.name: %q is also amqp.consume[%d]'s name: give each consumer its own name", key, cc.DisplayName(), j)
		}
		names[cc.DisplayName()] = i
		switch cc.Ack {
		case AckImmediate, AckDelivered, AckScript:
		default:
			return fmt.Errorf("%s.ack: %q: want immediate, delivered or script", key, cc.Ack)
		}
		switch cc.ExchangeType {
		case "direct", "topic", "fanout", "headers":
		default:
			return fmt.Errorf("%s.exchange_type: %q: want direct, topic, fanout or headers", key, cc.ExchangeType)
		}
		if cc.Exchange == "" && cc.Queue == "" {
			return fmt.Errorf("%s: give an exchange to bind to, or the queue to consume", key)
		}
		if cc.Exchange != "" && cc.RoutingKey == "" && len(cc.RoutingKeys) == 0 && cc.ExchangeType != "fanout" && cc.ExchangeType != "headers" {
			return fmt.Errorf("%s.routing_key: empty; give the key (topic patterns like route.req.# work)", key)
		}
		if cc.Prefetch < 0 || cc.Prefetch > 65535 {
			return fmt.Errorf("%s.prefetch: %d: want 0..65535", key, cc.Prefetch)
		}
		if cc.Deliver == "" {
			return fmt.Errorf("%s.deliver: empty; give an OpenSIPS mi target (opensips:udp:127.0.0.1:8080) or evapi:HOST:PORT", key)
		}
		if err := checkDeliver(cc.Deliver); err != nil {
			return fmt.Errorf("%s.deliver: %w", key, err)
		}
		if cc.Event == "" && (strings.HasPrefix(cc.Deliver, "opensips:") || cc.Deliver == DeliverEvents) {
			return fmt.Errorf("%s.event: empty; name the event to raise, e.g. E_AMQP_ROUTE_REQ", key)
		}
	}
	j := c.JSONRPC
	for i, l := range j.Listen {
		if _, _, err := ParseListen(l); err != nil {
			return fmt.Errorf("jsonrpc.listen[%d]: %w", i, err)
		}
	}
	for i, a := range j.Allow {
		if _, err := parseAllow(a); err != nil {
			return fmt.Errorf("jsonrpc.allow[%d]: %w", i, err)
		}
	}
	if j.MaxFrame < 256 || j.MaxFrame > 16<<20 {
		return fmt.Errorf("jsonrpc.max_frame: %d: want 256..16777216 bytes", j.MaxFrame)
	}
	if j.MaxConns < 1 {
		return fmt.Errorf("jsonrpc.max_conns: %d: want at least 1", j.MaxConns)
	}
	return nil
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
