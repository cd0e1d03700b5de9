package dmq

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/sipside/sipside/internal/config"
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
	PingInterval config.Duration `toml:"ping_interval"`
	// Peers are the channels this node runs: htable, usrloc, dialog. KDMQ for
	// any other channel is answered 404, as Kamailio does.
	Peers []string `toml:"peers"`
	// HTables limits the htable mirror to these tables; a message for another
	// table is answered 500 ("table not found") as Kamailio does. Empty: mirror
	// every table.
	HTables []string `toml:"htables"`
	// T1, T2 and Timeout are the SIP transaction timers (see Timers).
	T1      config.Duration `toml:"t1"`
	T2      config.Duration `toml:"t2"`
	Timeout config.Duration `toml:"timeout"`
	// LeaveTimeout bounds how long leaving waits for the nodes to confirm.
	LeaveTimeout config.Duration `toml:"leave_timeout"`
	// MaxNodes caps the node list (this node not counted). Lines that would
	// add a node beyond it are refused and counted: every node costs a ping
	// per interval and a line in every node list this node sends.
	MaxNodes int `toml:"max_nodes"`
	// MaxCells caps the cells mirrored per htable; a set or sync cell that
	// would add one more is refused and counted (updates of cells already
	// mirrored still apply).
	MaxCells int `toml:"max_cells"`
	// Echo makes the changes sipside writes through dmq: routes events
	// too (E_DMQ_HTABLE, E_DMQ_USRLOC, E_DMQ_DIALOG with node = this node),
	// and their copies coming back from the bus (sync answers). Off, a
	// route that writes what another route reads cannot loop.
	Echo bool `toml:"echo"`
}

// Limits a hostile or broken peer cannot push this node past.
const (
	// DefaultMaxNodes is far above any real DMQ bus: Kamailio 5.6 builds its
	// own node-list body in 1024 bytes, about 30 nodes.
	DefaultMaxNodes = 256
	// DefaultMaxCells bounds one table's mirror to about 35 MB (138 B/cell).
	DefaultMaxCells = 250000
	// maxMaxNodes bounds what an operator can ask for: every node is pinged
	// every interval, and its line goes into every list this node sends.
	maxMaxNodes = 4096
)

// defaults is the configuration used for every key left out.
func defaults() Config {
	return Config{
		Listen:       "sip:127.0.0.1:5090",
		PingInterval: config.Duration(10 * time.Second),
		Peers:        []string{ChannelHTable, ChannelUsrloc, ChannelDialog},
		T1:           config.Duration(DefaultTimers.T1),
		T2:           config.Duration(DefaultTimers.T2),
		Timeout:      config.Duration(DefaultTimers.Timeout),
		LeaveTimeout: config.Duration(2 * time.Second),
		MaxNodes:     DefaultMaxNodes,
		MaxCells:     DefaultMaxCells,
	}
}

// WithDefaults fills in every unset key.
func (c Config) WithDefaults() Config {
	d := defaults()
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
	if c.MaxNodes == 0 {
		c.MaxNodes = d.MaxNodes
	}
	if c.MaxCells == 0 {
		c.MaxCells = d.MaxCells
	}
	return c
}

// Validate is Check as one error, its keys under "dmq".
func (c Config) Validate() error {
	var p config.Problems
	c.Check(p.At("dmq"))
	return p.Err()
}

// Check reports every problem of [dmq] at once (keys relative to p), each
// saying what to change.
func (c Config) Check(p *config.Problems) {
	c = c.WithDefaults()
	self, err := ParseNodeAddr(c.Listen)
	if err != nil {
		p.AddErr("listen", err)
	} else {
		if self.Transport != "" && self.Transport != "tcp" {
			p.Add("listen", "%q: only UDP and TCP are supported; use ;transport=tcp or none", c.Listen)
		}
		if _, err := netip.ParseAddr(self.Host); err != nil {
			p.Add("listen", "%q: use an IPv4 address, not a host name: Kamailio stores the string as the node identity", c.Listen)
		}
	}
	if len(c.Seeds) == 0 {
		p.Add("seeds", `name at least one Kamailio node's server_address, e.g. seeds = ["sip:127.0.0.2:5060"]`)
	}
	for _, s := range c.Seeds {
		a, err := ParseNodeAddr(s)
		switch {
		case err != nil:
			p.AddErr("seeds", err)
		case !a.speakable():
			p.Add("seeds", "%q: only UDP and TCP are supported; use ;transport=tcp or none", s)
		case a == self:
			p.Add("seeds", "%q: is this node's own listen address; point it at another node", s)
		default:
			if _, err := a.udpAddr(); err != nil {
				p.Add("seeds", "%q: use an IP address: %v", s, err)
			}
		}
	}
	if c.PingInterval.Std() < time.Second {
		p.Add("ping_interval", "%s: use at least 1s (Kamailio itself uses at least 5s)", c.PingInterval)
	}
	for _, peer := range c.Peers {
		if !slices.Contains([]string{ChannelHTable, ChannelUsrloc, ChannelDialog}, peer) {
			p.Add("peers", "unknown peer %q (want htable, usrloc or dialog)", peer)
		}
	}
	if c.T1 <= 0 || c.T2 < c.T1 || c.Timeout < c.T1 {
		p.Add("t1", "want 0 < t1 <= t2 and t1 <= timeout (got t1=%s t2=%s timeout=%s)", c.T1, c.T2, c.Timeout)
	}
	if c.LeaveTimeout < 0 {
		p.Add("leave_timeout", "%v: must not be negative", c.LeaveTimeout)
	}
	if c.MaxNodes < 1 || c.MaxNodes > maxMaxNodes {
		p.Add("max_nodes", "%d: use 1 to %d (default %d); a real bus has a few nodes", c.MaxNodes, maxMaxNodes, DefaultMaxNodes)
	} else if c.MaxNodes < len(c.Seeds) {
		p.Add("max_nodes", "%d: smaller than the %d seeds; raise it to at least the number of seeds", c.MaxNodes, len(c.Seeds))
	}
	if c.MaxCells < 1 {
		p.Add("max_cells", "%d: use a positive number of cells per table (default %d)", c.MaxCells, DefaultMaxCells)
	}
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
