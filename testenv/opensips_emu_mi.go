package testenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fastjson"
)

// The emulator's MI engine: parameter recipes, replies and errors as
// OpenSIPS 3.6.8 prints them, and the commands it runs.

type osipsOutcome struct {
	reply         []byte // nil: no reply (notification)
	parseError    bool
	internalError bool
}

type osipsErr struct {
	code int
	msg  string
	data string
}

func (e *osipsEmu) handle(raw []byte) osipsOutcome {
	// cJSON stops at the end of the first value and ignores what follows.
	dec := json.NewDecoder(bytes.NewReader(raw))
	var first json.RawMessage
	if err := dec.Decode(&first); err != nil {
		return osipsOutcome{parseError: true}
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(first)
	if err != nil {
		return osipsOutcome{parseError: true}
	}
	if v.Type() != fastjson.TypeObject {
		// a batch, or anything else that is not an object, is an invalid request
		return osipsOutcome{reply: osipsErrorReply(nil, osipsErr{-32600, "Invalid Request", ""})}
	}
	id := member(v, "id")
	if id != nil {
		switch id.Type() {
		case fastjson.TypeNumber, fastjson.TypeString, fastjson.TypeNull:
		default:
			return osipsOutcome{internalError: true} // the reply cannot be printed
		}
	}
	jv, method, params := member(v, "jsonrpc"), member(v, "method"), member(v, "params")
	valid := jv != nil && jv.Type() == fastjson.TypeString && string(jv.GetStringBytes()) == "2.0" &&
		method != nil && method.Type() == fastjson.TypeString &&
		(params == nil || params.Type() == fastjson.TypeArray || params.Type() == fastjson.TypeObject)
	if !valid {
		return osipsOutcome{reply: osipsErrorReply(id, osipsErr{-32600, "Invalid Request", ""})}
	}
	result, merr := e.run(string(method.GetStringBytes()), params)
	if id == nil {
		return osipsOutcome{}
	}
	if merr != nil {
		return osipsOutcome{reply: osipsErrorReply(id, *merr)}
	}
	b := append([]byte(`{"jsonrpc":"2.0","result":`), result...)
	b = append(b, `,"id":`...)
	b = appendOsipsID(b, id)
	return osipsOutcome{reply: append(b, '}')}
}

// member is cJSON_GetObjectItem: the first member whose name matches case-insensitively.
func member(v *fastjson.Value, name string) *fastjson.Value {
	o, err := v.Object()
	if err != nil {
		return nil
	}
	var found *fastjson.Value
	o.Visit(func(k []byte, mv *fastjson.Value) {
		if found == nil && strings.EqualFold(string(k), name) {
			found = mv
		}
	})
	return found
}

func osipsErrorReply(id *fastjson.Value, e osipsErr) []byte {
	b := []byte(`{"jsonrpc":"2.0","error":{"code":`)
	b = strconv.AppendInt(b, int64(e.code), 10)
	b = append(b, `,"message":`...)
	b = appendCJSONString(b, e.msg)
	if e.data != "" {
		b = append(b, `,"data":`...)
		b = appendCJSONString(b, e.data)
	}
	b = append(b, `},"id":`...)
	b = appendOsipsID(b, id)
	return append(b, '}')
}

// appendOsipsID echoes an id as mi does: numbers as cJSON's valueint (int32,
// saturated, truncated), strings verbatim, anything else null.
func appendOsipsID(b []byte, id *fastjson.Value) []byte {
	if id == nil {
		return append(b, "null"...)
	}
	switch id.Type() {
	case fastjson.TypeNumber:
		return strconv.AppendInt(b, int64(valueint(id.GetFloat64())), 10)
	case fastjson.TypeString:
		return appendCJSONString(b, string(id.GetStringBytes()))
	}
	return append(b, "null"...)
}

func valueint(f float64) int32 {
	switch {
	case f >= math.MaxInt32:
		return math.MaxInt32
	case f <= math.MinInt32:
		return math.MinInt32
	}
	return int32(f)
}

// appendCJSONString prints s as cJSON does: only '"', '\' and control bytes escaped,
// everything else (invalid UTF-8 included) copied raw.
func appendCJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, `\b`...)
		case '\f':
			b = append(b, `\f`...)
		case '\n':
			b = append(b, `\n`...)
		case '\r':
			b = append(b, `\r`...)
		case '\t':
			b = append(b, `\t`...)
		default:
			if c < 0x20 {
				b = fmt.Appendf(b, `\u%04x`, c)
			} else {
				b = append(b, c)
			}
		}
	}
	return append(b, '"')
}

// osipsArgs holds a call's parameters after recipe matching, by recipe name.
type osipsArgs map[string]*fastjson.Value

// matchRecipe matches positional params by count, named ones by count and names.
func matchRecipe(recipes [][]string, params *fastjson.Value) (osipsArgs, *osipsErr) {
	var (
		n   int
		arr []*fastjson.Value
		obj *fastjson.Object
	)
	if params != nil {
		if params.Type() == fastjson.TypeArray {
			arr = params.GetArray()
			n = len(arr)
		} else {
			obj = params.GetObject()
			n = obj.Len()
		}
	}
	countMatched := false
	for _, r := range recipes {
		if len(r) != n {
			continue
		}
		countMatched = true
		args := osipsArgs{}
		if obj == nil {
			for i, name := range r {
				args[name] = arr[i]
			}
			return args, nil
		}
		ok := true
		for _, name := range r {
			mv := obj.Get(name)
			if mv == nil {
				ok = false
				break
			}
			args[name] = mv
		}
		if ok {
			return args, nil
		}
	}
	if countMatched {
		return nil, &osipsErr{-32602, "Invalid params", "Named parameters do not match"}
	}
	return nil, &osipsErr{-32602, "Invalid params", "Too few or too many parameters"}
}

func stringParam(v *fastjson.Value, name string) (string, *osipsErr) {
	switch v.Type() {
	case fastjson.TypeString:
		return string(v.GetStringBytes()), nil
	case fastjson.TypeNumber:
		return string(v.MarshalTo(nil)), nil
	}
	return "", &osipsErr{-32602, "Invalid params", "Bad type for parameter '" + name + "'"}
}

func intParam(v *fastjson.Value, name string) (int, *osipsErr) {
	switch v.Type() {
	case fastjson.TypeNumber:
		return int(valueint(v.GetFloat64())), nil
	case fastjson.TypeString:
		if n, err := strconv.Atoi(strings.TrimSpace(string(v.GetStringBytes()))); err == nil {
			return n, nil
		}
	}
	return 0, &osipsErr{-32602, "Invalid params", "Bad type for parameter '" + name + "'"}
}

func (e *osipsEmu) run(method string, params *fastjson.Value) ([]byte, *osipsErr) {
	recipes, ok := osipsRecipes[method]
	if !ok {
		return nil, &osipsErr{-32601, "Method not found", ""}
	}
	if params != nil && ((params.Type() == fastjson.TypeArray && len(params.GetArray()) == 0) ||
		(params.Type() == fastjson.TypeObject && params.GetObject().Len() == 0)) {
		params = nil // an empty list counts as no params
	}
	args, merr := matchRecipe(recipes, params)
	if merr != nil {
		return nil, merr
	}
	switch method {
	case "version":
		if args["revision"] != nil {
			// mi_version_1: the revision of the build, whatever the param says;
			// "unknown" for a build from a source tree without git.
			return []byte(`{"Server":"OpenSIPS (3.6.8 (x86_64/linux))","unknown":"unknown"}`), nil
		}
		return []byte(`{"Server":"OpenSIPS (3.6.8 (x86_64/linux))"}`), nil
	case "uptime":
		e.mu.Lock()
		started := e.started
		e.mu.Unlock()
		now := time.Now()
		const ctime = "Mon Jan _2 15:04:05 2006"
		return fmt.Appendf(nil, `{"Now":"%s","Up since":"%s","Up time":"%d [sec]"}`, now.Format(ctime), started.Format(ctime), int(now.Sub(started).Seconds())), nil
	case "which":
		if c, ok := args["command"]; ok {
			name, merr := stringParam(c, "command")
			if merr != nil {
				return nil, merr
			}
			rs, ok := osipsRecipes[name]
			if !ok {
				return nil, &osipsErr{404, "Command not found", ""}
			}
			b, _ := json.Marshal(rs)
			return b, nil
		}
		b, _ := json.Marshal(osipsWhich)
		return b, nil
	case "ps":
		pid := os.Getpid()
		return fmt.Appendf(nil, `{"Processes":[{"ID":0,"PID":%d,"Type":"attendant"},{"ID":1,"PID":%d,"Type":"MI Datagram"},{"ID":2,"PID":%d,"Type":"SIP receiver udp:127.0.0.1:5060"}]}`, pid, pid, pid), nil
	case "pwd":
		wd, _ := os.Getwd()
		b := appendCJSONString([]byte(`{"WD":`), wd+"/")
		return append(b, '}'), nil
	case "get_statistics", "list_statistics", "reset_statistics":
		return e.statistics(method, args["statistics"])
	case "events_list":
		b := []byte(`{"Events":[`)
		e.mu.Lock()
		for i, name := range e.events {
			if i > 0 {
				b = append(b, ',')
			}
			b = fmt.Appendf(b, `{"name":"%s","id":%d}`, name, i)
		}
		e.mu.Unlock()
		return append(b, "]}"...), nil
	case "event_subscribe":
		return e.subscribe(args)
	case "subscribers_list":
		return e.subscribersList(args)
	case "raise_event":
		return e.miRaise(args)
	}
	return nil, &osipsErr{-32601, "Method not found", ""}
}

// statistics answers get_statistics, list_statistics and reset_statistics as
// 3.6.8's statistics.c does: "statistics" must be a non-empty array (a string
// is -32602 Invalid params, which is what `get_statistics core:` sent as
// ["core:"] gets), each item "all" (get only), a group "core:", or one
// statistic "name" or "group:name"; none found is 404.
func (e *osipsEmu) statistics(method string, param *fastjson.Value) ([]byte, *osipsErr) {
	invalid := &osipsErr{-32602, "Invalid params", ""}
	var want []osipsStat
	if param == nil { // list_statistics without parameters lists them all
		want = osipsStats
	} else {
		items, err := param.Array()
		if err != nil || len(items) == 0 {
			return nil, invalid
		}
		for _, it := range items {
			var name string
			switch it.Type() {
			case fastjson.TypeString:
				name = string(it.GetStringBytes())
			case fastjson.TypeNumber:
				name = strconv.Itoa(int(valueint(it.GetFloat64())))
			default:
				return nil, invalid
			}
			for _, st := range osipsStats {
				group, isGroup := strings.CutSuffix(name, ":")
				switch {
				case name == "all" && method == "get_statistics",
					isGroup && method != "reset_statistics" && st.group == group,
					name == st.name || name == st.group+":"+st.name:
					want = append(want, st)
				}
			}
		}
	}
	if len(want) == 0 {
		return nil, &osipsErr{404, "Statistics Not Found", ""}
	}
	if method == "reset_statistics" {
		return []byte(`"OK"`), nil
	}
	e.mu.Lock()
	up := int(time.Since(e.started).Seconds())
	e.mu.Unlock()
	b := []byte{'{'}
	for i, st := range want {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendCJSONString(b, st.group+":"+st.name)
		b = append(b, ':')
		switch {
		case method == "list_statistics" && st.incremental:
			b = append(b, `"incremental"`...)
		case method == "list_statistics":
			b = append(b, `"non-incremental"`...)
		case st.name == "timestamp":
			b = strconv.AppendInt(b, int64(up), 10)
		case st.group == "shmem":
			b = strconv.AppendInt(b, osipsShmem(st.name), 10)
		default:
			b = append(b, '0')
		}
	}
	return append(b, '}'), nil
}

// osipsShmem is a plausible shared memory figure of a freshly started 3.6.8
// with the default 32 MiB (not recorded).
func osipsShmem(name string) int64 {
	const total, used = 32 << 20, 1 << 20
	switch name {
	case "total_size":
		return total
	case "used_size":
		return used
	case "real_used_size", "max_used_size":
		return used + 64<<10
	case "free_size":
		return total - used - 64<<10
	}
	return 120 // fragments
}

func (e *osipsEmu) eventID(name string) int {
	for i, n := range e.events {
		if n == name {
			return i
		}
	}
	return -1
}
