package main

import (
	"encoding/json"
	"strings"

	"github.com/sipside/sipside/mi"
)

// arrayParam is an OpenSIPS MI parameter that must be a JSON array: its name
// and its position among the positional parameters.
type arrayParam struct {
	pos  int
	name string
}

// opensipsArrayParams lists the OpenSIPS 3.4-3.6 MI commands with a parameter
// the proxy reads with get_mi_array_param, which refuses anything but a
// non-empty array (-32602 Invalid params). OpenSIPS's `which` names the
// parameters but not their types, so, as opensips-cli does, sipside keeps a
// table. raise_event's params is not here: it also takes a string or an object.
var opensipsArrayParams = map[string]arrayParam{
	"get_statistics":       {0, "statistics"},
	"list_statistics":      {0, "statistics"},
	"reset_statistics":     {0, "statistics"},
	"fs_subscribe":         {1, "events"},
	"fs_unsubscribe":       {1, "events"},
	"b2b_trigger_scenario": {1, "scenario_params"},
	"dlg_push_var":         {2, "DID"},
	"cluster_broadcast_mi": {2, "cmd_params"},
	"cluster_send_mi":      {3, "cmd_params"},
}

// opensipsArrays shapes params (from miParams) for an OpenSIPS command that
// takes an array, so that `get_statistics core: shmem:` sends
// [["core:","shmem:"]] and `get_statistics statistics='core: shmem:'` sends
// {"statistics":["core:","shmem:"]}. Positional arguments from the array's
// position on are gathered into it; a named one is split at white space. A
// value given as raw JSON (:=) is sent as given.
func opensipsArrays(method string, params any) any {
	ap, ok := opensipsArrayParams[method]
	if !ok {
		return params
	}
	switch p := params.(type) {
	case []any:
		if len(p) <= ap.pos {
			return p
		}
		rest := p[ap.pos:]
		if _, raw := rest[0].(json.RawMessage); raw && len(rest) == 1 {
			return p
		}
		return append(p[:ap.pos:ap.pos], any(append([]any(nil), rest...)))
	case mi.Named:
		out := make(mi.Named, len(p))
		for i, np := range p {
			out[i] = np
			if np.Name != ap.name {
				continue
			}
			var items []any
			switch v := np.Value.(type) {
			case string:
				for _, f := range strings.Fields(v) {
					items = append(items, f)
				}
			case json.Number:
				items = []any{v}
			default: // raw JSON
				continue
			}
			out[i].Value = items
		}
		return out
	}
	return params
}
