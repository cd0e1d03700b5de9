package main

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/sipside/sipside/mi"
	"github.com/sipside/sipside/testenv"
)

func TestOpenSIPSArrays(t *testing.T) {
	tests := []struct {
		method string
		args   []string
		want   any
	}{
		{"get_statistics", []string{"core:"}, []any{[]any{"core:"}}},
		{"get_statistics", []string{"core:", "shmem:"}, []any{[]any{"core:", "shmem:"}}},
		{"get_statistics", []string{`:=["core:"]`}, []any{json.RawMessage(`["core:"]`)}},
		{"get_statistics", []string{"statistics=core: shmem:"}, mi.Named{{Name: "statistics", Value: []any{"core:", "shmem:"}}}},
		{"get_statistics", []string{`statistics:=["core:"]`}, mi.Named{{Name: "statistics", Value: json.RawMessage(`["core:"]`)}}},
		{"get_statistics", nil, nil},
		{"list_statistics", nil, nil},
		{"reset_statistics", []string{"rcv_requests"}, []any{[]any{"rcv_requests"}}},
		{"fs_subscribe", []string{"fs://:pw@127.0.0.1:8021", "CHANNEL_CREATE", "CHANNEL_HANGUP"}, []any{"fs://:pw@127.0.0.1:8021", []any{"CHANNEL_CREATE", "CHANNEL_HANGUP"}}},
		{"fs_subscribe", []string{"fs://:pw@127.0.0.1:8021"}, []any{"fs://:pw@127.0.0.1:8021"}},
		{"dlg_push_var", []string{"name", "value", "1234.5678", "99.1"}, []any{"name", "value", []any{"1234.5678", "99.1"}}},
		{"cluster_broadcast_mi", []string{"1", "get_statistics", "core:"}, []any{json.Number("1"), "get_statistics", []any{"core:"}}},
		{"dlg_push_var", []string{"dlg_val_name=n", "dlg_val_value=v", "DID=1.2 3.4"}, mi.Named{{Name: "dlg_val_name", Value: "n"}, {Name: "dlg_val_value", Value: "v"}, {Name: "DID", Value: []any{"1.2", "3.4"}}}},
		// not an array command: unchanged
		{"raise_event", []string{"E_MY_EVENT", "a", "b"}, []any{"E_MY_EVENT", "a", "b"}},
		{"ps", nil, nil},
	}
	for _, tc := range tests {
		p, err := miParams(tc.args)
		if err != nil {
			t.Fatalf("%s %q: %v", tc.method, tc.args, err)
		}
		if got := opensipsArrays(tc.method, p); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s %q:\n got %#v\nwant %#v", tc.method, tc.args, got, tc.want)
		}
	}
}

// `sipside mi get_statistics core: shmem:` works against OpenSIPS 3.6 (the
// emulator answers as 3.6.8 does: the parameter must be an array).
func TestCmdMIOpenSIPSStatistics(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{})
	target := o.Target("udp")
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string // parts of
		stderr string   // part of
	}{
		{name: "two groups", args: []string{"get_statistics", "core:", "shmem:"}, stdout: []string{`"core:rcv_requests": 0`, `"shmem:total_size": `}},
		{name: "one group", args: []string{"get_statistics", "core:"}, stdout: []string{`"core:rcv_requests": 0`}},
		{name: "named", args: []string{"get_statistics", "statistics=shmem: rcv_requests"}, stdout: []string{`"shmem:free_size": `, `"core:rcv_requests": 0`}},
		{name: "raw JSON as given", args: []string{"get_statistics", `:=["core:"]`}, stdout: []string{`"core:rcv_requests": 0`}},
		{name: "list", args: []string{"list_statistics", "core:"}, stdout: []string{`"core:rcv_requests": "incremental"`}},
		{name: "reset", args: []string{"reset_statistics", "rcv_requests"}, stdout: []string{`"OK"`}},
		{name: "not found", args: []string{"get_statistics", "nope:"}, code: exitFailure, stderr: "404 Statistics Not Found"},
		{name: "a string is refused", args: []string{"--params", `["core:"]`, "get_statistics"}, code: exitFailure, stderr: "-32602 Invalid params"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runMI(t, nil, append([]string{"-t", target}, tc.args...)...)
			if code != tc.code || !strings.Contains(stderr, tc.stderr) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, tc.code, stdout, stderr)
			}
			for _, w := range tc.stdout {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout)
				}
			}
		})
	}
}
