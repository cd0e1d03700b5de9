package main

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/sipside/sipside/dmq"
	"github.com/sipside/sipside/evi"
	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/kazoo"
)

//go:embed default.toml
var defaultConfig string

// Config is sipside's configuration file. Every key has a default.
type Config struct {
	Log   LogConfig         `toml:"log"`
	HTTP  HTTPConfig        `toml:"http"`
	MI    MIConfig          `toml:"mi"`
	Input []evi.InputConfig `toml:"input"`
	Route []evi.RouteConfig `toml:"route"`
	// Spool keeps the events no backend took, on disk, for ordered replay.
	Spool evi.SpoolConfig `toml:"spool"`
	// DMQ joins a Kamailio DMQ bus; off without [dmq] listen.
	DMQ dmq.Config `toml:"dmq"`
	// AMQP and JSONRPC are the AMQP bridge for routing scripts; off
	// without [amqp] brokers.
	AMQP    kazoo.AMQPConfig    `toml:"amqp"`
	JSONRPC kazoo.JSONRPCConfig `toml:"jsonrpc"`
	// Subscribe lists the events sipside subscribes to at OpenSIPS.
	Subscribe []evi.SubscribeConfig `toml:"subscribe"`

	// Shutdown is how long SIGTERM waits for queued events to be delivered.
	Shutdown config.Duration `toml:"shutdown_timeout"`

	source string         // file name, or "embedded default"
	pos    map[string]int // line of every key written in the file
}

// LogConfig is [log].
type LogConfig struct {
	Level  string `toml:"level"`  // debug, info, warn, error
	Format string `toml:"format"` // text or json
}

// HTTPConfig is [http]: the observability server.
type HTTPConfig struct {
	Listen string `toml:"listen"` // HOST:PORT for /metrics and /healthz; "" turns it off
}

// MIConfig is [mi].
type MIConfig struct {
	Target string `toml:"target"` // e.g. opensips:udp:127.0.0.1:8080 or kamailio:http://127.0.0.1:5071/RPC
}

const (
	defaultHTTPListen = "127.0.0.1:9690"
	defaultMITarget   = "opensips:udp:127.0.0.1:8080"
	defaultShutdown   = "4s"
)

// dmqEnabled: a [dmq] section with a listen address starts a node.
func (c *Config) dmqEnabled() bool { return c.DMQ.Listen != "" }

func (c *Config) kazoo() kazoo.Config {
	return kazoo.Config{AMQP: c.AMQP, JSONRPC: c.JSONRPC}.WithDefaults()
}

func (c *Config) events() evi.Config {
	return evi.Config{Inputs: c.Input, Routes: c.Route, Spool: c.Spool}
}

// loadConfigFile reads and validates a config file; "" means the embedded default.
func loadConfigFile(path string) (*Config, error) {
	if path == "" {
		return parseConfig("embedded default", defaultConfig)
	}
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return parseConfig(path, string(src))
}

// parseConfig decodes and checks src. Every problem is reported at once, each
// at its key and line ("sipside.toml:7: route[0].window: -5: want 1 or
// more"), sorted by line; the error is a *config.Error.
func parseConfig(name, src string) (*Config, error) {
	pos := config.Positions(src)
	cfg := &Config{source: name, pos: pos}
	// Into plain data first: only a syntax error can stop this, and it is
	// then the one problem there is to report.
	var data map[string]any
	md, err := toml.Decode(src, &data)
	if err != nil {
		p := config.Problem{Msg: err.Error()}
		var pe toml.ParseError
		if errors.As(err, &pe) {
			p = config.Problem{Line: pe.Position.Line, Msg: strings.TrimSpace(firstLine(pe.Message))}
		}
		return nil, &config.Error{File: name, Problems: []config.Problem{p}}
	}
	// Then every value of the wrong type, at once; the decoder would stop
	// at the first.
	var problems config.Problems
	config.CheckTypes(data, reflect.TypeFor[Config](), &problems)
	if problems.Len() > 0 {
		// What is left decodes: re-encode it, so that the values that are
		// of the right type are checked too.
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(data); err != nil {
			return nil, located(name, pos, problems.Err())
		}
		src = buf.String()
	}
	if md, err = toml.Decode(src, cfg); err != nil {
		return nil, located(name, pos, err)
	}
	for _, k := range md.Undecoded() {
		problems.Add(keyPath(md, k), "unknown key (contrib/sipside.toml lists every key that exists)")
	}
	cfg.fillDefaults()
	cfg.check(&problems)
	if err := problems.Err(); err != nil {
		return nil, located(name, pos, err)
	}
	return cfg, nil
}

// checkHost reports what run would refuse on this machine although the file
// is well formed (see hostProblems), at the keys' lines.
func (c *Config) checkHost() error {
	var p config.Problems
	hostProblems(c, &p)
	if err := p.Err(); err != nil {
		return located(c.source, c.pos, err)
	}
	return nil
}

// located puts file and lines on the problems of err.
func located(file string, pos map[string]int, err error) error {
	ps := config.AsError(err)
	for i := range ps {
		ps[i].Line = config.Line(pos, ps[i].Key)
	}
	return &config.Error{File: file, Problems: ps}
}

// keyPath writes an undecoded key as Problems write keys: the decoder's path
// has no element numbers, so array tables are counted from the keys before it.
func keyPath(md toml.MetaData, k toml.Key) string {
	// md.Keys() lists every key in file order, array table headers once per
	// element: the element of k is the number of its table's headers seen
	// before k, minus one.
	count := map[string]int{}
	arrays := map[string]bool{}
	for _, kk := range md.Keys() {
		if md.Type(kk...) == "ArrayHash" {
			arrays[kk.String()] = true
		}
	}
	for _, kk := range md.Keys() {
		if arrays[kk.String()] {
			count[kk.String()]++
		}
		if kk.String() != k.String() {
			continue
		}
		var b strings.Builder
		for i := range k {
			if i > 0 {
				b.WriteByte('.')
			}
			b.WriteString(k[i])
			prefix := toml.Key(k[:i+1]).String()
			if arrays[prefix] && i < len(k)-1 {
				b.WriteString("[" + strconv.Itoa(count[prefix]-1) + "]")
			}
		}
		return b.String()
	}
	return k.String()
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// fillDefaults fills what the file left out that the daemon itself owns; the
// sections fill their own (WithDefaults) where they are used.
func (c *Config) fillDefaults() {
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.HTTP.Listen == "" {
		c.HTTP.Listen = defaultHTTPListen
	}
	if c.MI.Target == "" {
		c.MI.Target = defaultMITarget
	}
	if c.Shutdown == 0 {
		_ = c.Shutdown.UnmarshalText([]byte(defaultShutdown))
	}
	// With no inputs or no routes, the embedded default's stand in, so that
	// a file with only [log] still does the main job.
	if len(c.Input) == 0 || len(c.Route) == 0 {
		var def Config
		if _, err := toml.Decode(defaultConfig, &def); err != nil {
			panic("embedded default config: " + err.Error())
		}
		if len(c.Input) == 0 {
			c.Input = def.Input
		}
		if len(c.Route) == 0 {
			c.Route = def.Route
		}
	}
}

// WithDefaults is the whole configuration with every default filled in, as
// the daemon runs it (contrib/sipside.toml is checked against it).
func (c Config) WithDefaults() Config {
	c.fillDefaults()
	in := make([]evi.InputConfig, len(c.Input))
	for i, ic := range c.Input {
		in[i] = ic.WithDefaults()
	}
	c.Input = in
	rs := make([]evi.RouteConfig, len(c.Route))
	for i, rc := range c.Route {
		rs[i] = rc.WithDefaults()
	}
	c.Route = rs
	c.Spool = c.Spool.WithDefaults()
	c.DMQ = c.DMQ.WithDefaults()
	k := c.kazoo()
	c.AMQP, c.JSONRPC = k.AMQP, k.JSONRPC
	ss := make([]evi.SubscribeConfig, len(c.Subscribe))
	for i, sc := range c.Subscribe {
		ss[i] = sc.WithDefaults()
	}
	c.Subscribe = ss
	return c
}

// check reports every problem of the file's values, each under its key.
func (c *Config) check(p *config.Problems) {
	if _, err := parseLevel(c.Log.Level); err != nil {
		p.At("log").AddErr("level", err)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		p.At("log").Add("format", "%q: want text or json", c.Log.Format)
	}
	if c.HTTP.Listen != "off" {
		if _, port, err := net.SplitHostPort(c.HTTP.Listen); err != nil || port == "" {
			p.At("http").Add("listen", "%q: want HOST:PORT such as %s, or \"off\"", c.HTTP.Listen, defaultHTTPListen)
		}
	}
	if !strings.HasPrefix(c.MI.Target, "opensips:") && !strings.HasPrefix(c.MI.Target, "kamailio:") {
		p.At("mi").Add("target", "%q: want opensips:… or kamailio:…, e.g. %s", c.MI.Target, defaultMITarget)
	}
	if c.Shutdown < 0 {
		p.Add("shutdown_timeout", "%v: must not be negative (default %s)", c.Shutdown, defaultShutdown)
	}
	c.events().Check(p)
	if c.dmqEnabled() {
		c.DMQ.Check(p.At("dmq"))
	}
	c.checkDMQRoutes(p)
	if k := c.kazoo(); k.Enabled() || len(k.JSONRPC.Listen) > 0 || len(k.AMQP.Consume) > 0 {
		k.Check(p)
	}
	for i, sc := range c.Subscribe {
		sp := p.Index("subscribe", i)
		sc.Check(sp)
		if !listensOn(c.Input, sc.Socket) {
			sp.Add("socket", "%q is not one of sipside's [[input]] listen strings: OpenSIPS would send the events where nobody listens", sc.Socket)
		}
	}
}

// checkDMQRoutes reports dmq: sockets that would have nothing to write
// through: no [dmq] node, or a node without the peer of their channel.
func (c *Config) checkDMQRoutes(p *config.Problems) {
	peers := c.DMQ.WithDefaults().Peers
routes:
	for i, rc := range c.Route {
		for _, ch := range evi.DMQChannels(rc.To) {
			switch {
			case !c.dmqEnabled():
				p.Index("route", i).Add("to", "dmq:%s writes through sipside's DMQ node: configure [dmq] listen and seeds", ch)
				continue routes
			case !slices.Contains(peers, ch):
				p.Index("route", i).Add("to", "dmq:%s needs the %s peer: add %q to [dmq] peers", ch, ch, ch)
			}
		}
	}
}

// listensOn tells whether socket is one of the inputs, written the same way:
// OpenSIPS keys subscriptions by the exact socket string.
func listensOn(inputs []evi.InputConfig, socket string) bool {
	for _, in := range inputs {
		if in.Listen == socket {
			return true
		}
	}
	return false
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%q: want debug, info, warn or error", s)
}
