package kazoo

import (
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

const issueExample = `
[amqp]
brokers = ["amqp://guest:guest@127.0.0.1:5672/", "amqps://user:pw@backup.example:5671/vhost"]
heartbeat = "10s"
kazoo = false

[jsonrpc]
listen = ["tcp:127.0.0.1:8095", "netstring:127.0.0.1:8096", "http://127.0.0.1:8097"]
allow = ["127.0.0.0/8"]

[[amqp.consume]]
exchange = "callmgr"
routing_key = "route.req.#"
ack = "delivered"
deliver = "opensips:udp:127.0.0.1:8080"
event = "E_AMQP_ROUTE_REQ"
`

func decode(t *testing.T, src string) Config {
	t.Helper()
	var c Config
	md, err := toml.Decode(src, &c)
	if err != nil {
		t.Fatal(err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		t.Fatalf("undecoded keys %v", und)
	}
	c = c.WithDefaults()
	return c
}

func TestConfigIssueExample(t *testing.T) {
	c := decode(t, issueExample)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.AMQP.Brokers) != 2 || c.AMQP.Heartbeat.Std() != 10*time.Second || len(c.JSONRPC.Listen) != 3 {
		t.Fatalf("decoded %+v", c)
	}
	cc := c.AMQP.Consume[0]
	if cc.ExchangeType != "topic" || cc.Prefetch != DefaultPrefetch || cc.AckTimeout.Std() != DefaultAckTimeout || cc.Event != "E_AMQP_ROUTE_REQ" {
		t.Fatalf("consume defaults %+v", cc)
	}
	if c.AMQP.QueryTimeout.Std() != DefaultQueryTimeout || !strings.HasPrefix(c.AMQP.Node, "sipside@") {
		t.Fatalf("amqp defaults %+v", c.AMQP)
	}
}

func TestConfigValidate(t *testing.T) {
	base := "[amqp]\nbrokers = [\"amqp://127.0.0.1/\"]\n"
	for _, tc := range []struct {
		name, src, want string
	}{
		{"empty is fine", "", ""},
		{"listen without broker", "[jsonrpc]\nlisten = [\"tcp:127.0.0.1:8095\"]\n", "amqp.brokers: empty"},
		{"bad broker", "[amqp]\nbrokers = [\"amqp://127.0.0.1/\", \"http://x/\"]\n", "amqp.brokers[1]"},
		{"bad listen", base + "[jsonrpc]\nlisten = [\"udp:127.0.0.1:1\"]\n", "jsonrpc.listen[0]"},
		{"listen without port", base + "[jsonrpc]\nlisten = [\"tcp:127.0.0.1\"]\n", "want HOST:PORT"},
		{"bad allow", base + "[jsonrpc]\nallow = [\"localhost\"]\n", "jsonrpc.allow[0]"},
		{"tiny frame", base + "[jsonrpc]\nmax_frame = 10\n", "jsonrpc.max_frame"},
		{"bad ack", base + "[[amqp.consume]]\nexchange = \"x\"\nrouting_key = \"k\"\nack = \"later\"\ndeliver = \"evapi:127.0.0.1:8448\"\n", "amqp.consume[0].ack"},
		{"no key", base + "[[amqp.consume]]\nexchange = \"x\"\ndeliver = \"evapi:127.0.0.1:8448\"\n", "amqp.consume[0].routing_key"},
		{"no deliver", base + "[[amqp.consume]]\nexchange = \"x\"\nrouting_key = \"k\"\n", "amqp.consume[0].deliver"},
		{"kamailio mi", base + "[[amqp.consume]]\nexchange = \"x\"\nrouting_key = \"k\"\ndeliver = \"kamailio:http://127.0.0.1:5071/RPC\"\n", "use evapi"},
		{"opensips needs event", base + "[[amqp.consume]]\nexchange = \"x\"\nrouting_key = \"k\"\ndeliver = \"opensips:udp:127.0.0.1:8080\"\n", "amqp.consume[0].event"},
		{"bad exchange type", base + "[[amqp.consume]]\nexchange = \"x\"\nexchange_type = \"fan\"\nrouting_key = \"k\"\ndeliver = \"evapi:127.0.0.1:8448\"\n", "exchange_type"},
		{"half tls", base + "tls_cert = \"c.pem\"\n", "tls_key"},
		{"good consume", base + "[[amqp.consume]]\nqueue = \"q\"\nack = \"script\"\ndeliver = \"evapi:127.0.0.1:8448\"\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := decode(t, tc.src)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestBadDurationNamesTheFix(t *testing.T) {
	var c Config
	_, err := toml.Decode("[amqp]\nheartbeat = \"10 seconds\"\n", &c)
	if err == nil || !strings.Contains(err.Error(), `"30s"`) {
		t.Fatalf("err %v", err)
	}
}
