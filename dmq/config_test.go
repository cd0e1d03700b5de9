package dmq

import (
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/sipside/sipside/internal/config"
)

func TestConfigValidate(t *testing.T) {
	good := Config{Listen: "sip:127.0.0.1:5090", Seeds: []string{"sip:127.0.0.2:5060"}}
	tests := []struct {
		name string
		mod  func(*Config)
		want string // "" = valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"no seeds", func(c *Config) { c.Seeds = nil }, "dmq.seeds: name at least one"},
		{"seed is self", func(c *Config) { c.Seeds = []string{"sip:127.0.0.1:5090"} }, "own listen address"},
		{"seed without port", func(c *Config) { c.Seeds = []string{"sip:127.0.0.2"} }, "add the port"},
		{"seed host name", func(c *Config) { c.Seeds = []string{"sip:kam.example.com:5060"} }, "use an IP address"},
		{"seed tcp", func(c *Config) { c.Seeds = []string{"sip:127.0.0.2:5060;transport=tcp"} }, ""},
		{"seed tls", func(c *Config) { c.Seeds = []string{"sip:127.0.0.2:5061;transport=tls"} }, "only UDP and TCP"},
		{"listen tcp", func(c *Config) { c.Listen = "sip:127.0.0.1:5090;transport=tcp" }, ""},
		{"listen host name", func(c *Config) { c.Listen = "sip:localhost:5090" }, "not a host name"},
		{"listen garbage", func(c *Config) { c.Listen = "127.0.0.1:5090" }, "sip: scheme"},
		{"listen user", func(c *Config) { c.Listen = "sip:x@127.0.0.1:5090" }, "without a user part"},
		{"ping", func(c *Config) { c.PingInterval = config.Duration(time.Millisecond) }, "ping_interval"},
		{"peer", func(c *Config) { c.Peers = []string{"presence"} }, `unknown peer "presence"`},
		{"timers", func(c *Config) { c.T1 = config.Duration(time.Second); c.T2 = config.Duration(time.Millisecond) }, "t1 <= t2"},
		{"max_nodes negative", func(c *Config) { c.MaxNodes = -1 }, "dmq.max_nodes: -1: use 1 to"},
		{"max_nodes huge", func(c *Config) { c.MaxNodes = 1 << 20 }, "dmq.max_nodes: 1048576: use 1 to"},
		{"max_nodes below seeds", func(c *Config) { c.MaxNodes = 1; c.Seeds = append(c.Seeds, "sip:127.0.0.3:5060") }, "smaller than the 2 seeds"},
		{"max_cells negative", func(c *Config) { c.MaxCells = -5 }, "dmq.max_cells: -5"},
		{"limits set", func(c *Config) { c.MaxNodes = 8; c.MaxCells = 10 }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			c.Seeds = append([]string(nil), good.Seeds...)
			tc.mod(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestConfigTOML(t *testing.T) {
	var c Config
	_, err := toml.Decode(`
listen = "sip:127.0.0.1:5090"
seeds = ["sip:127.0.0.2:5060", "sip:127.0.0.3:5060"]
ping_interval = "5s"
peers = ["htable"]
htables = ["repl"]
timeout = "10s"
`, &c)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c = c.WithDefaults()
	if c.PingInterval.Std() != 5*time.Second || c.Timeout.Std() != 10*time.Second || c.T1.Std() != 500*time.Millisecond || len(c.Seeds) != 2 {
		t.Fatalf("decoded %+v", c)
	}
}

// A seed on the listen IP is valid (Kamailio 5.6 and 5.7 join such a node) but warned
// about: 5.8 and later never add it (find_dmq_node_ip).
func TestConfigWarnings(t *testing.T) {
	for _, tc := range []struct {
		listen string
		seeds  []string
		warn   bool
	}{
		{"sip:127.0.0.1:5090", []string{"sip:127.0.0.2:5060"}, false},
		{"sip:127.0.0.1:5090", []string{"sip:127.0.0.2:5060", "sip:127.0.0.1:5060"}, true},
		{"sip:10.0.0.5:5090", []string{"sip:10.0.0.5:5060;transport=tcp"}, true},
	} {
		c := Config{Listen: tc.listen, Seeds: tc.seeds}
		if err := c.Validate(); err != nil {
			t.Errorf("%s %v: Validate: %v", tc.listen, tc.seeds, err)
		}
		w := c.Warnings()
		if (len(w) > 0) != tc.warn || (tc.warn && !strings.Contains(w[0], "5.8")) {
			t.Errorf("%s %v: warnings %q, want some: %v", tc.listen, tc.seeds, w, tc.warn)
		}
	}
}
