package main

import (
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/sipside/sipside/dmq"
	"github.com/sipside/sipside/evi"
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
	Shutdown evi.Duration `toml:"shutdown_timeout"`

	source string // file name, or "embedded default"
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
	k := kazoo.Config{AMQP: c.AMQP, JSONRPC: c.JSONRPC}
	k.SetDefaults()
	return k
}

func (c *Config) events() evi.Config {
	return evi.Config{Inputs: c.Input, Routes: c.Route, Spool: c.Spool}
}

// ConfigError names the key (and line, when known) of a bad setting.
type ConfigError struct {
	File string
	Line int
	Key  string
	Err  error
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *ConfigError) Unwrap() error { return e.Err }

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

func parseConfig(name, src string) (*Config, error) {
	cfg := &Config{source: name}
	md, err := toml.Decode(src, cfg)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &ConfigError{File: name, Line: pe.Position.Line, Err: errors.New(strings.TrimSpace(firstLine(pe.Message)))}
		}
		if m := decodeErrRe.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return nil, &ConfigError{File: name, Line: line, Key: m[2], Err: errors.New(m[3])}
		}
		return nil, &ConfigError{File: name, Err: err}
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		return nil, &ConfigError{File: name, Line: keyLine(src, k), Key: k.String(),
			Err: fmt.Errorf("unknown key (see contrib/sipside.toml for every key that exists)")}
	}
	cfg.setDefaults()
	if err := cfg.validate(src); err != nil {
		return nil, err
	}
	return cfg, nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func (c *Config) setDefaults() {
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

func (c *Config) validate(src string) error {
	bad := func(key string, table string, index int, err error) error {
		return &ConfigError{File: c.source, Line: lineOf(src, table, index, key), Key: keyName(table, index, key), Err: err}
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		return bad("level", "log", -1, err)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		return bad("format", "log", -1, fmt.Errorf("%q: want text or json", c.Log.Format))
	}
	if c.HTTP.Listen != "off" {
		if _, port, err := net.SplitHostPort(c.HTTP.Listen); err != nil || port == "" {
			return bad("listen", "http", -1, fmt.Errorf("%q: want HOST:PORT such as %s, or \"off\"", c.HTTP.Listen, defaultHTTPListen))
		}
	}
	if !strings.HasPrefix(c.MI.Target, "opensips:") && !strings.HasPrefix(c.MI.Target, "kamailio:") {
		return bad("target", "mi", -1, fmt.Errorf("%q: want opensips:… or kamailio:…, e.g. %s", c.MI.Target, defaultMITarget))
	}
	seen := map[string]bool{}
	for i, in := range c.Input {
		if err := (evi.Config{Inputs: []evi.InputConfig{in}}).Validate(); err != nil {
			return bad("listen", "input", i, unprefix(err))
		}
		if seen[in.Listen] {
			return bad("listen", "input", i, fmt.Errorf("%q is listed twice", in.Listen))
		}
		seen[in.Listen] = true
	}
	if err := c.Spool.Validate(); err != nil {
		key, _, _ := strings.Cut(err.Error(), " ")
		if lineOf(src, "spool", -1, key) == 0 {
			key = "max_bytes"
		}
		return bad(key, "spool", -1, err)
	}
	if c.dmqEnabled() {
		if err := c.DMQ.Validate(); err != nil {
			return sectionError(c.source, src, err)
		}
	}
	if k := c.kazoo(); k.Enabled() || len(k.JSONRPC.Listen) > 0 || len(k.AMQP.Consume) > 0 {
		if err := k.Validate(); err != nil {
			return sectionError(c.source, src, err)
		}
	}
	for i, sc := range c.Subscribe {
		if err := sc.Validate(); err != nil {
			key, _, _ := strings.Cut(err.Error(), ":")
			switch key {
			case "target", "events", "socket", "expire", "check_interval":
			default:
				key = "socket"
				if strings.Contains(err.Error(), "target") {
					key = "target"
				}
			}
			return bad(key, "subscribe", i, err)
		}
		if !listensOn(c.Input, sc.Socket) {
			return bad("socket", "subscribe", i, fmt.Errorf("%q is not one of sipside's [[input]] listen strings: OpenSIPS would send the events where nobody listens", sc.Socket))
		}
	}
	if len(c.Route) > evi.MaxRoutes {
		return bad("to", "route", evi.MaxRoutes, fmt.Errorf("%d routes: at most %d (each runs its own workers and connections); merge routes with event globs or virtual: sockets", len(c.Route), evi.MaxRoutes))
	}
	for i, r := range c.Route {
		if err := (evi.Config{Routes: []evi.RouteConfig{r}}).Validate(); err != nil {
			key := "to"
			switch {
			case strings.Contains(err.Error(), "events:"):
				key = "events"
			case strings.HasPrefix(unwrapRoute(err), "queue ="):
				key = "queue"
			case strings.HasPrefix(unwrapRoute(err), "window ="):
				key = "window"
			}
			return bad(key, "route", i, err)
		}
	}
	return nil
}

// unwrapRoute drops evi's `route "NAME": ` prefix from a route's error.
func unwrapRoute(err error) string {
	s := err.Error()
	if _, rest, ok := strings.Cut(s, `": `); ok && strings.HasPrefix(s, "route ") {
		return rest
	}
	return s
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

// unprefix drops evi's "input[0].listen: " prefix; the ConfigError names the key.
func unprefix(err error) error {
	s := err.Error()
	if i := strings.Index(s, ": "); i > 0 && strings.HasPrefix(s, "input[") {
		return errors.New(s[i+2:])
	}
	return err
}

// sectionError turns a package's "dmq.seeds: …" or "amqp.consume[1].ack: …"
// error into a ConfigError that carries the key's line when it is written
// in the file.
func sectionError(file, src string, err error) error {
	msg := err.Error()
	m := sectionKeyRe.FindStringSubmatch(msg)
	if m == nil {
		return &ConfigError{File: file, Err: err}
	}
	key := m[1]
	rest := strings.TrimPrefix(strings.TrimPrefix(msg, key), ":")
	rest = strings.TrimSpace(rest)
	// Find the table (and array index) and the last key: amqp.consume[1].ack
	// is "ack" in the second [[amqp.consume]]; dmq.seeds is "seeds" in [dmq].
	parts := strings.Split(key, ".")
	last := parts[len(parts)-1]
	if k := strings.Index(last, "["); k > 0 {
		last = last[:k]
	}
	table, index := strings.Join(parts[:len(parts)-1], "."), -1
	if im := indexRe.FindStringSubmatch(table); im != nil {
		table = im[1]
		index, _ = strconv.Atoi(im[2])
	}
	return &ConfigError{File: file, Line: lineOf(src, table, index, last), Key: key, Err: errors.New(rest)}
}

var (
	sectionKeyRe = regexp.MustCompile(`^((?:dmq|amqp|jsonrpc)(?:\.[a-z_]+(?:\[\d+\])?)+)[ :]`)
	indexRe      = regexp.MustCompile(`^([a-z_.]+)\[(\d+)\]$`)
)

func keyName(table string, index int, key string) string {
	if index >= 0 {
		return fmt.Sprintf("%s[%d].%s", table, index, key)
	}
	return table + "." + key
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

var (
	// decodeErrRe picks the line and key out of BurntSushi/toml's type errors.
	decodeErrRe = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]+)"\): (.*)$`)
	headerRe    = regexp.MustCompile(`^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?`)
	keyRe       = regexp.MustCompile(`^\s*([A-Za-z0-9_\-]+)\s*=`)
)

// lineOf finds the line of key in [table] (index < 0) or in the index-th
// [[table]]; 0 when the key is not written in the file (a default).
// BurntSushi/toml reports lines for syntax errors only, and an operator
// wants the line for a bad value too.
func lineOf(src, table string, index int, key string) int {
	cur, count := "", map[string]int{}
	curIdx := -1
	for n, line := range strings.Split(src, "\n") {
		if m := headerRe.FindStringSubmatch(line); m != nil {
			cur = m[2]
			curIdx = -1
			if m[1] == "[[" {
				curIdx = count[cur]
				count[cur]++
			}
			continue
		}
		if m := keyRe.FindStringSubmatch(line); m != nil && m[1] == key && cur == table && curIdx == index {
			return n + 1
		}
	}
	return 0
}

// keyLine finds the line of an undecoded key such as route.0.colour or log.colour.
func keyLine(src string, k toml.Key) int {
	if len(k) == 1 {
		return lineOf(src, "", -1, k[0])
	}
	// Array tables count their elements in the key path only sometimes; try
	// both readings.
	table := strings.Join(k[:len(k)-1], ".")
	for idx := -1; idx < 64; idx++ {
		if l := lineOf(src, table, idx, k[len(k)-1]); l > 0 {
			return l
		}
	}
	return 0
}
