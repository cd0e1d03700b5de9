package metrics

import (
	"os"
	"strings"
	"testing"
)

func TestParseProcStat(t *testing.T) {
	// A command name with spaces and ')' in it, as a process may set its own.
	const line = "4242 (sip side) (x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 130 0 0 20 0 9 0 987654 1480134656 3210 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	tests := []struct {
		name    string
		in      string
		want    procStat
		wantErr string
	}{
		{name: "tricky comm", in: line, want: procStat{cpuSeconds: 3.8, startTicks: 987654, vsizeBytes: 1480134656, rssBytes: 3210 * 4096}},
		{name: "no comm end", in: "4242 (sipside S 1", wantErr: "no ')'"},
		{name: "short", in: "4242 (sipside) S 1 2 3", wantErr: "fields after the command name"},
		{name: "not a number", in: strings.Replace(line, " 250 ", " x ", 1), wantErr: "field 14"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProcStat([]byte(tc.in), 4096)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestParseLimitsAndBootTime(t *testing.T) {
	const limits = "Limit                     Soft Limit           Hard Limit           Units     \n" +
		"Max cpu time              unlimited            unlimited            seconds   \n" +
		"Max open files            1024                 524288               files     \n"
	tests := []struct {
		name string
		in   string
		want float64
		err  bool
	}{
		{"soft limit", limits, 1024, false},
		{"unlimited", strings.Replace(limits, "1024   ", "unlimited", 1), -1, false},
		{"missing", "Limit Soft Limit\n", 0, true},
	}
	for _, tc := range tests {
		got, err := parseMaxOpenFiles([]byte(tc.in))
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("%s: got %v, %v; want %v (error %v)", tc.name, got, err, tc.want, tc.err)
		}
	}
	if bt, err := parseBootTime([]byte("cpu  1 2 3\nintr 5\nbtime 1764200000\nprocesses 9\n")); err != nil || bt != 1764200000 {
		t.Errorf("btime = %d, %v", bt, err)
	}
	if _, err := parseBootTime([]byte("cpu 1\n")); err == nil {
		t.Error("no error without a btime line")
	}
}

// The families are written from this process's /proc at each call.
func TestProcessFamilies(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc on this system")
	}
	var b strings.Builder
	if _, err := New().WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total ",
		"# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes ",
		"# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes ",
		"# TYPE process_open_fds gauge\nprocess_open_fds ",
		"# TYPE process_max_fds gauge\nprocess_max_fds ",
		"# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds ",
		"go_memstats_heap_inuse_bytes ",
		"go_info{version=\"go",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q", want)
		}
	}
}
