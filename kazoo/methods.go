package kazoo

import (
	"context"
	"crypto/rand"
	"errors"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/valyala/fastjson"

	"github.com/sipside/sipside/internal/rabbit"
	"github.com/sipside/sipside/internal/ratelog"
)

const rabbitDirectReplyTo = rabbit.DirectReplyTo

func randRead(b []byte) (int, error) { return rand.Read(b) }

func (b *Bridge) newDispatcher() *dispatcher {
	d := &dispatcher{met: newServerMetrics(b.reg), refusals: ratelog.New(b.log, time.Second)}
	handlers := map[string]handlerFunc{
		"amqp.publish":   b.rpcPublish,
		"amqp.query":     b.rpcQuery,
		"amqp.ack":       b.rpcAck,
		"amqp.nack":      b.rpcNack,
		"sipside.ping":   func(context.Context, *fastjson.Value) ([]byte, *rpcError) { return []byte(`"pong"`), nil },
		"sipside.status": b.rpcStatus,
	}
	d.methods = make(map[string]method, len(handlers))
	for name, h := range handlers {
		d.methods[name] = method{name: name, h: h}
	}
	return d
}

// publishParams reads {exchange, routing_key, payload, content_type?, headers?, persistent?}.
func publishParams(p *fastjson.Value) (PublishRequest, *rpcError) {
	var r PublishRequest
	var err *rpcError
	if r.Exchange, _, err = str(p, "exchange"); err != nil {
		return r, err
	}
	if r.RoutingKey, err = needStr(p, "routing_key"); err != nil {
		return r, err
	}
	pl := p.Get("payload")
	if pl == nil {
		return r, errorf(CodeInvalidParams, `missing param "payload" (a JSON object, or a string sent verbatim)`)
	}
	if pl.Type() == fastjson.TypeString {
		// A string is the body itself: scripts often hold JSON in a string variable.
		r.Body = append([]byte(nil), pl.GetStringBytes()...)
	} else {
		r.Body = pl.MarshalTo(nil)
	}
	if r.ContentType, _, err = str(p, "content_type"); err != nil {
		return r, err
	}
	if h := p.Get("headers"); h != nil && h.Type() != fastjson.TypeNull {
		o, e := h.Object()
		if e != nil {
			return r, errorf(CodeInvalidParams, `headers must be an object of names to strings or numbers, e.g. {"X-Custom":"abc"}`)
		}
		r.Headers = amqp.Table{}
		var bad string
		o.Visit(func(k []byte, v *fastjson.Value) {
			switch v.Type() {
			case fastjson.TypeString:
				r.Headers[string(k)] = string(v.GetStringBytes())
			case fastjson.TypeNumber:
				if n, e := v.Int64(); e == nil {
					r.Headers[string(k)] = n
				} else {
					r.Headers[string(k)] = v.GetFloat64()
				}
			case fastjson.TypeTrue, fastjson.TypeFalse:
				r.Headers[string(k)] = v.GetBool()
			default:
				bad = string(k)
			}
		})
		if bad != "" {
			return r, errorf(CodeInvalidParams, "header "+strconv.Quote(bad)+" must be a string, number or boolean")
		}
	}
	if pv := p.Get("persistent"); pv != nil {
		switch pv.Type() {
		case fastjson.TypeTrue:
			r.Persistent = true
		case fastjson.TypeFalse, fastjson.TypeNull:
		default:
			return r, errorf(CodeInvalidParams, "persistent must be true or false")
		}
	}
	return r, nil
}

func (b *Bridge) rpcPublish(ctx context.Context, p *fastjson.Value) ([]byte, *rpcError) {
	r, rerr := publishParams(p)
	if rerr != nil {
		return nil, rerr
	}
	id, err := b.Publish(ctx, r)
	if err != nil {
		return nil, toRPCError(err)
	}
	out := []byte(`{"status":"confirmed"`)
	if id != "" {
		out = append(out, `,"msg_id":`...)
		out = appendString(out, id)
	}
	return append(out, '}'), nil
}

func (b *Bridge) rpcQuery(ctx context.Context, p *fastjson.Value) ([]byte, *rpcError) {
	r, rerr := publishParams(p)
	if rerr != nil {
		return nil, rerr
	}
	q := QueryRequest{PublishRequest: r}
	if t := p.Get("timeout_ms"); t != nil && t.Type() != fastjson.TypeNull {
		ms, err := t.Int64()
		if err != nil || ms <= 0 {
			return nil, errorf(CodeInvalidParams, "timeout_ms must be a positive integer (milliseconds)")
		}
		// A typo must not pin a waiter for hours: refused, not quietly cut.
		if limit := b.cfg.AMQP.MaxQueryTimeout.Std(); ms > limit.Milliseconds() {
			return nil, errorf(CodeInvalidParams, "timeout_ms "+strconv.FormatInt(ms, 10)+" is above the "+strconv.FormatInt(limit.Milliseconds(), 10)+" ms allowed (amqp.max_query_timeout)")
		}
		q.Timeout = time.Duration(ms) * time.Millisecond
	}
	reply, err := b.Query(ctx, q)
	if err != nil {
		return nil, toRPCError(err)
	}
	return jsonOrString(reply), nil
}

// jsonOrString returns body itself when it is JSON, else body as a JSON string.
func jsonOrString(body []byte) []byte {
	if fastjson.ValidateBytes(body) == nil {
		return body
	}
	return appendString(nil, string(body))
}

func (b *Bridge) rpcAck(ctx context.Context, p *fastjson.Value) ([]byte, *rpcError) {
	id, rerr := needStr(p, "id")
	if rerr != nil {
		return nil, rerr
	}
	if err := b.acks.settle(id, true, false); err != nil {
		return nil, toRPCError(err)
	}
	return []byte(`"acked"`), nil
}

func (b *Bridge) rpcNack(ctx context.Context, p *fastjson.Value) ([]byte, *rpcError) {
	id, rerr := needStr(p, "id")
	if rerr != nil {
		return nil, rerr
	}
	requeue := true
	if v := p.Get("requeue"); v != nil && v.Type() == fastjson.TypeFalse {
		requeue = false
	}
	if err := b.acks.settle(id, false, requeue); err != nil {
		return nil, toRPCError(err)
	}
	return []byte(`"nacked"`), nil
}

func (b *Bridge) rpcStatus(ctx context.Context, _ *fastjson.Value) ([]byte, *rpcError) {
	out := []byte(`{"connected":`)
	s := b.mgr.Current()
	if s != nil {
		out = append(out, `true,"broker":`...)
		out = appendString(out, s.Broker)
	} else {
		out = append(out, `false,"broker":null`...)
	}
	out = append(out, `,"kazoo":`...)
	out = strconv.AppendBool(out, b.cfg.AMQP.Kazoo)
	b.q.mu.Lock()
	nq := len(b.q.waiters)
	b.q.mu.Unlock()
	out = append(out, `,"queries_waiting":`...)
	out = strconv.AppendInt(out, int64(nq), 10)
	out = append(out, `,"acks_waiting":`...)
	out = strconv.AppendInt(out, int64(b.acks.len()), 10)
	out = append(out, `,"consumers":[`...)
	for i, c := range b.consumers {
		if i > 0 {
			out = append(out, ',')
		}
		out = c.status(out)
	}
	return append(out, "]}"...), nil
}

// toRPCError maps bridge errors to codes a script can branch on.
func toRPCError(err error) *rpcError {
	code := CodeInternal
	switch {
	case errors.Is(err, ErrQueryTimeout):
		code = CodeTimeout
	case errors.Is(err, rabbit.ErrReturned):
		code = CodeUnroutable
	case errors.Is(err, rabbit.ErrNacked):
		code = CodeNacked
	case errors.Is(err, rabbit.ErrNoExchange):
		code = CodeNoExchange
	case errors.Is(err, rabbit.ErrUnconfirmed), errors.Is(err, ErrReplyLost):
		code = CodeUnconfirmed
	case errors.Is(err, rabbit.ErrNotConnected), errors.Is(err, rabbit.ErrClosed):
		code = CodeNotConnected
	case errors.Is(err, context.DeadlineExceeded):
		code = CodeTimeout
	case errors.Is(err, errUnknownDelivery):
		code = CodeUnknownID
	case errors.Is(err, errKazooPayload):
		code = CodeInvalidParams
	case errors.Is(err, ErrTooManyQueries):
		code = CodeBusy
	}
	return errorf(code, err.Error())
}
