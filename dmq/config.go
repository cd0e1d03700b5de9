package dmq

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/sipside/sipside/internal/metrics"
)

// Channels (peer ids) of the Kamailio modules sipside speaks to.
const (
	ChannelNotification = "notification_peer"
	ChannelHTable       = "htable"
	ChannelUsrloc       = "usrloc"
	ChannelDialog       = "dialog"
)

// Config is the [dmq] section of sipside.toml.
//
//	[dmq]
//	listen = "sip:127.0.0.1:5090"
//	seeds = ["sip:127.0.0.2:5060"]
//	ping_interval = "10s"
//	peers = ["htable", "usrloc", "dialog"]
type Config struct {
	// Listen is this node's identity and UDP socket, sip:IP:PORT. The very
	// same string is announced in node lists, so it must be the address the
	// Kamailio nodes reach (an IP literal, explicit port).
	Listen string `toml:"listen"`
	// Seeds are notification addresses: nodes asked first, pinged forever
	// and never deleted. Never put the node itself here.
	Seeds []string `toml:"seeds"`
	// PingInterval is how often every known node gets this node's list.
	// Kamailio's own minimum is 5 s.
	PingInterval time.Duration `toml:"ping_interval"`
	// Peers are the channels this node runs: htable, usrloc, dialog. KDMQ for
	// any other channel is answered 404, as Kamailio does.
	Peers []string `toml:"peers"`
	// HTables limits the htable mirror to these tables; a message for another
	// table is answered 500 ("table not found") as Kamailio does. Empty: mirror
	// every table.
	HTables []string `toml:"htables"`
	// T1, T2 and Timeout are the SIP transaction timers (see Timers).
	T1      time.Duration `toml:"t1"`
	T2      time.Duration `toml:"t2"`
	Timeout time.Duration `toml:"timeout"`
	// LeaveTimeout bounds how long leaving waits for the nodes to confirm.
	LeaveTimeout time.Duration `toml:"leave_timeout"`
}

// Defaults returns the configuration used for every key left out.
func Defaults() Config {
	return Config{
		Listen:       "sip:127.0.0.1:5090",
		PingInterval: 10 * time.Second,
		Peers:        []string{ChannelHTable, ChannelUsrloc, ChannelDialog},
		T1:           DefaultTimers.T1,
		T2:           DefaultTimers.T2,
		Timeout:      DefaultTimers.Timeout,
		LeaveTimeout: 2 * time.Second,
	}
}

// withDefaults fills zero values.
func (c Config) withDefaults() Config {
	d := Defaults()
	if c.Listen == "" {
		c.Listen = d.Listen
	}
	if c.PingInterval == 0 {
		c.PingInterval = d.PingInterval
	}
	if c.Peers == nil {
		c.Peers = d.Peers
	}
	if c.T1 == 0 {
		c.T1 = d.T1
	}
	if c.T2 == 0 {
		c.T2 = d.T2
	}
	if c.Timeout == 0 {
		c.Timeout = d.Timeout
	}
	if c.LeaveTimeout == 0 {
		c.LeaveTimeout = d.LeaveTimeout
	}
	return c
}

// Validate reports every problem at once, each saying what to change.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	self, err := ParseNodeAddr(c.Listen)
	if err != nil {
		errs = append(errs, fmt.Errorf("dmq.listen: %w", err))
	} else {
		if self.Transport != "" && self.Transport != "tcp" {
			errs = append(errs, fmt.Errorf("dmq.listen %q: only UDP and TCP are supported; use ;transport=tcp or none", c.Listen))
		}
		if _, err := netip.ParseAddr(self.Host); err != nil {
			errs = append(errs, fmt.Errorf("dmq.listen %q: use an IPv4 address, not a host name: Kamailio stores the string as the node identity", c.Listen))
		}
	}
	if len(c.Seeds) == 0 {
		errs = append(errs, errors.New(`dmq.seeds: name at least one Kamailio node's server_address, e.g. seeds = ["sip:127.0.0.2:5060"]`))
	}
	for _, s := range c.Seeds {
		a, err := ParseNodeAddr(s)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("dmq.seeds: %w", err))
		case !a.speakable():
			errs = append(errs, fmt.Errorf("dmq.seeds %q: only UDP and TCP are supported; use ;transport=tcp or none", s))
		case a == self:
			errs = append(errs, fmt.Errorf("dmq.seeds %q: is this node's own listen address; point it at another node", s))
		default:
			if _, err := a.udpAddr(); err != nil {
				errs = append(errs, fmt.Errorf("dmq.seeds %q: use an IP address: %w", s, err))
			}
		}
	}
	if c.PingInterval < time.Second {
		errs = append(errs, fmt.Errorf("dmq.ping_interval %s: use at least 1s (Kamailio itself uses at least 5s)", c.PingInterval))
	}
	for _, p := range c.Peers {
		if !slices.Contains([]string{ChannelHTable, ChannelUsrloc, ChannelDialog}, p) {
			errs = append(errs, fmt.Errorf("dmq.peers: unknown peer %q (want htable, usrloc or dialog)", p))
		}
	}
	if c.T1 <= 0 || c.T2 < c.T1 || c.Timeout < c.T1 {
		errs = append(errs, fmt.Errorf("dmq timers: want 0 < t1 <= t2 and t1 <= timeout (got t1=%s t2=%s timeout=%s)", c.T1, c.T2, c.Timeout))
	}
	return errors.Join(errs...)
}

// Warnings are what Validate lets through but a bus may not: a seed on the listen
// address's IP (another port). Kamailio 5.6 and 5.7 tell nodes apart by URI; 5.8 and
// later (dmq's find_dmq_node_ip) take an unknown URI with a known IP for the node of
// that IP, so such a sipside node never joins their bus.
func (c Config) Warnings() []string {
	self, err := ParseNodeAddr(c.Listen)
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range c.Seeds {
		if a, err := ParseNodeAddr(s); err == nil && a.Host == self.Host && a != self {
			out = append(out, fmt.Sprintf("dmq.listen %q shares its IP with seed %q: Kamailio 5.8 and later take a node on a known node's IP for that node and never add it; give sipside an IP of its own", c.Listen, s))
		}
	}
	return out
}

// Options are what the daemon hands a node besides its configuration.
type Options struct {
	Logger  *slog.Logger
	Metrics *metrics.Registry
	// OnChange receives every change as an event: E_DMQ_NODE, E_DMQ_HTABLE,
	// E_DMQ_USRLOC or E_DMQ_DIALOG with JSON params. It is called from the
	// node's request worker: hand the event off, do not block.
	OnChange func(name string, params []byte)
	// Trace, when set, sees every message sent or received (sipside dmq watch).
	Trace func(in bool, peer netip.AddrPort, m *Message)
}
