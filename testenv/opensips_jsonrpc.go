package testenv

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fastjson"
)

// The jsonrpc module as the lab configured it (LIVE.md 2g): 500 ms to connect,
// 1 s to read the reply.
const (
	jsonrpcConnectTimeout = 500 * time.Millisecond
	jsonrpcReadTimeout    = time.Second
)

const jsonrpcModules = `loadmodule "sipmsgops.so"
loadmodule "jsonrpc.so"
modparam("jsonrpc", "connect_timeout", 500)
modparam("jsonrpc", "read_timeout", 1000)`

// jsonrpcRoute is the request-route part that runs the module's functions for
// a SIP OPTIONS to sipside_jreq@ or sipside_jnotif@: the method in X-Method,
// the params in the body, and $rc and the ret variable back in the reply (as
// the lab's jreq route does).
func jsonrpcRoute(dest string) string {
	if dest == "" {
		return ""
	}
	return fmt.Sprintf(`	if ($rU == "sipside_jreq") {
		$var(ret) = "<unset>";
		# a statement, so that $rc is the function's return code
		jsonrpc_request(%[1]q, "$hdr(X-Method)", "$rb", $var(ret));
		$var(rc) = $rc;
		append_to_reply("X-RC: $var(rc)\r\nX-Ret: $(var(ret){s.encode.hexa})\r\n");
		sl_send_reply(200, "jsonrpc_request done");
		exit;
	}
	if ($rU == "sipside_jnotif") {
		jsonrpc_notification(%[1]q, "$hdr(X-Method)", "$rb");
		$var(rc) = $rc;
		append_to_reply("X-RC: $var(rc)\r\n");
		sl_send_reply(200, "jsonrpc_notification done");
		exit;
	}`, dest)
}

// JSONRPCRequest is the script's jsonrpc_request(JSONRPCDest, method, params,
// $var(ret)): it returns $rc (1 result, -3 error reply, -2 no usable reply,
// -1 bad params) and $var(ret), which is "<unset>" when the module left it
// alone and otherwise cJSON's formatted print of the result or error.
func (o *OpenSIPSServer) JSONRPCRequest(method, params string) (rc int, ret string, err error) {
	if o.cfg.JSONRPCDest == "" {
		return 0, "", fmt.Errorf("testenv: OpenSIPSConfig.JSONRPCDest is not set")
	}
	if o.real != nil {
		return o.real.scriptJSONRPC("sipside_jreq", method, params)
	}
	rc, ret = emulateJSONRPC(o.cfg.JSONRPCDest, method, params, true)
	return rc, ret, nil
}

// JSONRPCNotification is the script's jsonrpc_notification: $rc is 1 once the
// request is written, -2 when the server cannot be reached.
func (o *OpenSIPSServer) JSONRPCNotification(method, params string) (rc int, err error) {
	if o.cfg.JSONRPCDest == "" {
		return 0, fmt.Errorf("testenv: OpenSIPSConfig.JSONRPCDest is not set")
	}
	if o.real != nil {
		rc, _, err = o.real.scriptJSONRPC("sipside_jnotif", method, params)
		return rc, err
	}
	rc, _ = emulateJSONRPC(o.cfg.JSONRPCDest, method, params, false)
	return rc, nil
}

// scriptJSONRPC triggers the route with a SIP OPTIONS and reads X-RC and X-Ret.
func (r *osipsProc) scriptJSONRPC(user, method, params string) (int, string, error) {
	c, err := net.Dial("udp", r.sip)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	local := c.LocalAddr().String()
	callID := strconv.FormatUint(rand.Uint64(), 16)
	msg := fmt.Sprintf("OPTIONS sip:%s@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s\r\nMax-Forwards: 70\r\n"+
		"From: <sip:testenv@%s>;tag=%s\r\nTo: <sip:%s@%s>\r\nCall-ID: %s\r\nCSeq: 1 OPTIONS\r\nX-Method: %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		user, r.sip, local, callID, local, callID, user, r.sip, callID, method, len(params), params)
	if _, err := c.Write([]byte(msg)); err != nil {
		return 0, "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		return 0, "", fmt.Errorf("testenv: no SIP reply from OpenSIPS's jsonrpc route: %w", err)
	}
	tr := textproto.NewReader(bufio.NewReader(strings.NewReader(string(buf[:n]))))
	status, err := tr.ReadLine()
	if err != nil || !strings.HasPrefix(status, "SIP/2.0 200 ") {
		return 0, "", fmt.Errorf("testenv: jsonrpc route answered %q", status)
	}
	h, err := tr.ReadMIMEHeader()
	if err != nil {
		return 0, "", fmt.Errorf("testenv: jsonrpc route reply: %w", err)
	}
	rc, err := strconv.Atoi(h.Get("X-Rc"))
	if err != nil {
		return 0, "", fmt.Errorf("testenv: jsonrpc route reply without X-RC: %q", buf[:n])
	}
	ret, err := hex.DecodeString(h.Get("X-Ret"))
	if err != nil {
		return 0, "", fmt.Errorf("testenv: X-Ret is not hex: %w", err)
	}
	return rc, string(ret), nil
}

// emulateJSONRPC does what the 3.6.8 module does (SOURCE.md, LIVE.md 2g): a new
// TCP connection per call, the request written compact with no delimiter
// (params re-printed by cJSON, a notification with "id":null), then for a
// request a read until the bytes parse as one JSON value; the reply's id is
// not checked.
func emulateJSONRPC(dest, method, params string, request bool) (rc int, ret string) {
	const unset = "<unset>"
	pv, err := fastjson.Parse(params)
	if err != nil || (pv.Type() != fastjson.TypeArray && pv.Type() != fastjson.TypeObject) {
		return -1, unset
	}
	id := "null"
	if request {
		id = strconv.Itoa(int(rand.Int32N(math.MaxInt32)))
	}
	req := `{"id":` + id + `,"jsonrpc":"2.0","method":` + string(appendCJSONString(nil, method)) + `,"params":` + string(cjsonPrint(nil, pv, false, 0)) + `}`
	c, err := net.DialTimeout("tcp", dest, jsonrpcConnectTimeout)
	if err != nil {
		return -2, unset
	}
	defer c.Close()
	if _, err := c.Write([]byte(req)); err != nil {
		return -2, unset
	}
	if !request {
		return 1, unset
	}
	_ = c.SetReadDeadline(time.Now().Add(jsonrpcReadTimeout))
	var got []byte
	tmp := make([]byte, 4096)
	for {
		n, err := c.Read(tmp)
		got = append(got, tmp[:n]...)
		if v, perr := fastjson.ParseBytes(got); perr == nil {
			if r := v.Get("result"); r != nil {
				return 1, string(cjsonPrint(nil, r, true, 0))
			}
			if e := v.Get("error"); e != nil {
				return -3, string(cjsonPrint(nil, e, true, 0))
			}
			return -2, unset
		}
		if err != nil {
			return -2, unset
		}
	}
}

// cjsonPrint prints v as OpenSIPS's bundled cJSON does, keeping member order
// and duplicate keys. Formatted output puts each object member on its own
// line, indented with tabs, with a tab after the colon, and keeps arrays on
// one line with ", " between elements.
func cjsonPrint(b []byte, v *fastjson.Value, formatted bool, depth int) []byte {
	switch v.Type() {
	case fastjson.TypeNull:
		return append(b, "null"...)
	case fastjson.TypeTrue:
		return append(b, "true"...)
	case fastjson.TypeFalse:
		return append(b, "false"...)
	case fastjson.TypeString:
		return appendCJSONString(b, string(v.GetStringBytes()))
	case fastjson.TypeNumber:
		return append(b, cjsonNumber(v.GetFloat64())...)
	case fastjson.TypeArray:
		a := v.GetArray()
		b = append(b, '[')
		for i, e := range a {
			if i > 0 {
				b = append(b, ',')
				if formatted {
					b = append(b, ' ')
				}
			}
			b = cjsonPrint(b, e, formatted, depth+1)
		}
		return append(b, ']')
	}
	o := v.GetObject()
	depth++
	b = append(b, '{')
	if formatted {
		b = append(b, '\n')
	}
	i, n := 0, o.Len()
	o.Visit(func(k []byte, e *fastjson.Value) {
		if formatted {
			b = append(b, strings.Repeat("\t", depth)...)
		}
		b = appendCJSONString(b, string(k))
		b = append(b, ':')
		if formatted {
			b = append(b, '\t')
		}
		b = cjsonPrint(b, e, formatted, depth)
		if i++; i < n {
			b = append(b, ',')
		}
		if formatted {
			b = append(b, '\n')
		}
	})
	if formatted {
		b = append(b, strings.Repeat("\t", depth-1)...)
	}
	return append(b, '}')
}

// cjsonNumber is cJSON's print_number: integers in int range with %d, other
// whole numbers with %.0f, very small or large ones with %e, the rest with %f.
func cjsonNumber(d float64) string {
	switch {
	case d == 0:
		return "0"
	case d == math.Trunc(d) && d <= math.MaxInt32 && d >= math.MinInt32:
		return strconv.Itoa(int(d))
	case math.IsNaN(d) || math.IsInf(d, 0):
		return "null"
	case d == math.Floor(d) && math.Abs(d) < 1e60:
		return fmt.Sprintf("%.0f", d)
	case math.Abs(d) < 1e-6 || math.Abs(d) > 1e9:
		return fmt.Sprintf("%e", d)
	}
	return fmt.Sprintf("%f", d)
}
