package kazoo

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fastjson"

	"github.com/sipside/sipside/internal/jsonstr"
	"github.com/sipside/sipside/internal/ratelog"
)

// JSON-RPC error codes. The -320xx ones are sipside's; their messages say what to do.
const (
	CodeParse          = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternal       = -32603

	CodeNotConnected = -32001 // no broker connection
	CodeUnroutable   = -32002 // published, but no queue is bound for the routing key
	CodeNacked       = -32003 // the broker refused the message
	CodeNoExchange   = -32004 // the exchange does not exist
	CodeTimeout      = -32005 // no reply (query) or no confirm (publish) in time
	CodeUnconfirmed  = -32006 // connection lost before the confirm; may or may not have arrived
	CodeUnknownID    = -32007 // amqp.ack/nack of a delivery that is not waiting
	CodeBusy         = -32008 // connection or frame limits
	CodeForbidden    = -32009 // source address not in jsonrpc.allow
)

// rpcError is a JSON-RPC error object.
type rpcError struct {
	Code    int
	Message string
}

func (e *rpcError) Error() string { return e.Message }

func errorf(code int, msg string) *rpcError { return &rpcError{Code: code, Message: msg} }

// handlerFunc answers one method: the raw JSON result, or an error.
type handlerFunc func(ctx context.Context, params *fastjson.Value) ([]byte, *rpcError)

// method is one entry of the dispatcher's table.
type method struct {
	name string
	h    handlerFunc
}

// dispatcher turns request bytes into response bytes. It is shared by all listeners.
type dispatcher struct {
	methods map[string]method
	parsers fastjson.ParserPool
	met     *serverMetrics
	// refusals logs requests that are not JSON, at most once a second per
	// listener.
	refusals *ratelog.Logger
}

// handle answers one request. It returns nil for a notification (no id, or "id":null
// as OpenSIPS's jsonrpc_notification sends), which gets no reply on any transport.
func (d *dispatcher) handle(ctx context.Context, transport string, req []byte) []byte {
	start := time.Now()
	p := d.parsers.Get()
	defer d.parsers.Put(p)
	v, err := p.ParseBytes(req)
	if err != nil {
		d.met.request(transport, "", "parse_error")
		msg := parseErrorText(req, err)
		d.refusals.WarnKey(transport, "JSON-RPC request is not JSON", "listener", transport, "error", msg)
		return errorResponse(nil, CodeParse, msg)
	}
	if v.Type() != fastjson.TypeObject {
		d.met.request(transport, "", "invalid")
		if v.Type() == fastjson.TypeArray {
			return errorResponse(nil, CodeInvalidRequest, "batches are not supported: send one request object per call")
		}
		return errorResponse(nil, CodeInvalidRequest, "a request must be a JSON object with method, params and id")
	}
	idv := v.Get("id")
	var id []byte
	if idv != nil && idv.Type() != fastjson.TypeNull {
		switch idv.Type() {
		case fastjson.TypeNumber, fastjson.TypeString:
			id = idv.MarshalTo(nil)
		default:
			d.met.request(transport, "", "invalid")
			return errorResponse(nil, CodeInvalidRequest, "id must be a number or a string")
		}
	}
	mv := v.Get("method")
	if mv == nil || mv.Type() != fastjson.TypeString {
		d.met.request(transport, "", "invalid")
		return reply(id, errorResponse(id, CodeInvalidRequest, `missing "method" (a string such as "amqp.publish")`))
	}
	// Looked up without converting to a string first (the compiler does not
	// allocate for a map index); the known name comes back from the table.
	m, ok := d.methods[string(mv.GetStringBytes())]
	if !ok {
		d.met.request(transport, "unknown", "method_not_found")
		return reply(id, errorResponse(id, CodeMethodNotFound, "unknown method "+strconv.Quote(string(mv.GetStringBytes()))+"; methods: amqp.publish, amqp.query, amqp.ack, amqp.nack, sipside.ping, sipside.status"))
	}
	method, h := m.name, m.h
	params := v.Get("params")
	if params == nil || params.Type() == fastjson.TypeNull {
		params = emptyObject
	}
	if params.Type() != fastjson.TypeObject {
		d.met.request(transport, method, "invalid_params")
		return reply(id, errorResponse(id, CodeInvalidParams, "params must be an object with named members, e.g. {\"exchange\":\"x\",\"routing_key\":\"k\",\"payload\":{}}"))
	}
	result, rerr := h(ctx, params)
	if rerr != nil {
		d.met.request(transport, method, "error")
		d.met.latency(transport, method, start)
		return reply(id, errorResponse(id, rerr.Code, rerr.Message))
	}
	d.met.request(transport, method, "ok")
	d.met.latency(transport, method, start)
	return reply(id, resultResponse(id, result))
}

// maxErrorText bounds the parser's text in an error reply: fastjson repeats
// its context once per nesting level, 14 KB for a deeply nested request.
const maxErrorText = 200

// parseErrorText says why req is not JSON, briefly.
func parseErrorText(req []byte, err error) string {
	if _, serr := scanJSON(req); errors.Is(serr, errBadFrame) && strings.Contains(serr.Error(), "nested") {
		return "parse error: " + strings.TrimPrefix(serr.Error(), errBadFrame.Error()+": ") + " (send one JSON-RPC 2.0 object)"
	}
	msg := err.Error()
	if len(msg) > maxErrorText {
		msg = strings.ToValidUTF8(msg[:maxErrorText], "") + "…"
	}
	return "parse error: " + msg + " (send one JSON-RPC 2.0 object)"
}

var emptyObject = fastjson.MustParse(`{}`)

// reply drops the response of a notification.
func reply(id, resp []byte) []byte {
	if id == nil {
		return nil
	}
	return resp
}

func resultResponse(id, result []byte) []byte {
	b := make([]byte, 0, len(result)+len(id)+40)
	b = append(b, `{"jsonrpc":"2.0","result":`...)
	b = append(b, result...)
	return appendID(b, id)
}

func errorResponse(id []byte, code int, msg string) []byte {
	b := make([]byte, 0, len(msg)+80)
	b = append(b, `{"jsonrpc":"2.0","error":{"code":`...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, `,"message":`...)
	b = appendString(b, msg)
	b = append(b, '}')
	return appendID(b, id)
}

func appendID(b, id []byte) []byte {
	b = append(b, `,"id":`...)
	if id == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, id...)
	}
	return append(b, '}')
}

// appendString writes s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendString(b []byte, s string) []byte { return jsonstr.Append(b, s) }

// str reads an optional string member.
func str(v *fastjson.Value, key string) (string, bool, *rpcError) {
	m := v.Get(key)
	if m == nil || m.Type() == fastjson.TypeNull {
		return "", false, nil
	}
	if m.Type() != fastjson.TypeString {
		return "", false, errorf(CodeInvalidParams, key+" must be a string")
	}
	return string(m.GetStringBytes()), true, nil
}

// needStr reads a required string member.
func needStr(v *fastjson.Value, key string) (string, *rpcError) {
	s, ok, err := str(v, key)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", errorf(CodeInvalidParams, "missing param "+strconv.Quote(key))
	}
	return s, nil
}
