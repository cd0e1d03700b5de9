package kazoo

import (
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

// kazooModuleTemplate adds Kamailio's kazoo module beside janssonrpcc, so that the same
// SIP-triggered query can go through sipside (janssonrpcc → amqp.query, kazoo mode) or
// through kazoo_async_query, against the same Kazoo-style responder.
func kazooModuleTemplate() string {
	t := kamailioTemplate()
	t = strings.Replace(t, `loadmodule "evapi.so"`, `loadmodule "evapi.so"
loadmodule "kazoo.so"
modparam("kazoo", "node_hostname", "kamailio-bench.test")
modparam("kazoo", "amqp_connection", "{{.Vars.amqp}}")
modparam("kazoo", "pua_mode", 0)
modparam("kazoo", "amqp_max_channels", 16)
modparam("kazoo", "amqp_query_timeout_sec", 2)`, 1)
	t = strings.Replace(t, `	case "jansson":`, `	case "kzquery_async":
		kazoo_async_query("sipside_kazoo_test", "bench.kz", "$rb", "KZ_ASYNC_OK", "KZ_ASYNC_ERR");
		exit;
	case "jansson":`, 1)
	t = strings.Replace(t, `event_route[evapi:message-received]`, `onreply_route[KZ_ASYNC_OK] {
	$sht(t=>kz) = $kzR;
}
failure_route[KZ_ASYNC_ERR] {
	t_reply("504", "kazoo query timeout");
}

event_route[evapi:message-received]`, 1)
	return t
}

// BenchmarkKamailioQuery measures a query as a Kamailio script sees it (SIP MESSAGE in,
// final reply out) through sipside and through Kamailio's own kazoo_async_query, with
// the same responder. kazoo_async_query ends with tm's 500 (its success route may not
// reply); its timeout is a 504 after 2 s, counted as a failure.
func BenchmarkKamailioQuery(b *testing.B) {
	u := brokerURL(b)
	// Kazoo's module drops or crashes on replies faster than ~1 ms (DESIGN.md), so the
	// responder of this comparison waits 2 ms, for both paths.
	startResponder(b, u, "bench.kz", &responder{kazoo: true, delay: 2 * time.Millisecond})
	port := testenv.FreePort(b, "tcp", "127.0.0.1")
	startBridge(b, u, func(c *Config) {
		c.AMQP.Kazoo = true
		c.JSONRPC.Listen = []string{"netstring:127.0.0.1:" + strconv.Itoa(port)}
	}, Options{})
	amqpURL := strings.TrimSuffix(u, "/")
	k := testenv.NewKamailio(b, testenv.KamailioConfig{Name: "kzbench", Template: kazooModuleTemplate(),
		Vars: map[string]any{"netstring": port, "http": 1, "evapi": testenv.FreePort(b, "tcp", "127.0.0.1"), "amqp": amqpURL}})
	const body = `{"exchange":"sipside_kazoo_test","routing_key":"bench.kz","payload":{"Event-Category":"sipcmd","Event-Name":"lookup","q":"x"},"timeout_ms":2000}`
	const kzBody = `{"Event-Category":"sipcmd","Event-Name":"lookup","q":"x"}`
	waitFor(b, 15*time.Second, "janssonrpcc connected", func() bool {
		st, _ := sipMessage(b, k.SIPAddr(), "jansson", body)
		return strings.Contains(st, " 200 ")
	})
	for _, path := range []struct{ name, user, body, ok string }{
		{"sipside-janssonrpcc", "jansson", body, " 200 "},
		{"kazoo_async_query", "kzquery_async", kzBody, " 500 "},
	} {
		for _, callers := range []int{1, 16} {
			b.Run(path.name+"/callers="+strconv.Itoa(callers), func(b *testing.B) {
				var failed sync.Map
				closedLoop(b, callers, func(int, int) error {
					st, res := sipMessage(b, k.SIPAddr(), path.user, path.body)
					if !strings.Contains(st, path.ok) || (path.user == "jansson" && !strings.Contains(res, `"echo":"x"`)) {
						failed.Store(st, res)
						return errNotCounted
					}
					return nil
				})
				n := 0
				failed.Range(func(k, v any) bool { n++; b.Logf("failed: %v %v", k, v); return n < 3 })
				if !k.Running() {
					b.Fatalf("Kamailio died:\n%s", k.LogTail(30))
				}
			})
		}
	}
}
