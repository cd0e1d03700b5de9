package metrics

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// The process_* families carry the names and meanings of Prometheus's
// standard process collector, so that dashboards and alerts written for any
// other exporter work on sipside unchanged. Like that collector they are read
// from /proc at scrape time; where there is no /proc they are left out.

// userHZ is the unit of the tick counts in /proc/PID/stat. The kernel fixes it
// at 100 for user space on every architecture Go runs Linux on, which is why
// the official collector hard-codes it too instead of calling sysconf.
const userHZ = 100

// procStat is what the process collector needs of /proc/self/stat.
type procStat struct {
	cpuSeconds float64 // utime + stime
	startTicks uint64  // starttime: ticks after boot
	vsizeBytes uint64
	rssBytes   uint64
}

// parseProcStat parses /proc/PID/stat. The command name (field 2) is in
// parentheses and may itself hold spaces and ')', so the fields are counted
// from the last ')'.
func parseProcStat(b []byte, pageSize int) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("no ')' after the command name")
	}
	// f[0] is field 3 (state), so field N is f[N-3].
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 22 {
		return procStat{}, fmt.Errorf("%d fields after the command name, want at least 22", len(f))
	}
	var n [5]uint64
	for k, idx := range []int{14, 15, 22, 23, 24} { // utime, stime, starttime, vsize, rss
		v, err := strconv.ParseUint(f[idx-3], 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("field %d: %w", idx, err)
		}
		n[k] = v
	}
	return procStat{
		cpuSeconds: float64(n[0]+n[1]) / userHZ,
		startTicks: n[2],
		vsizeBytes: n[3],
		rssBytes:   n[4] * uint64(pageSize),
	}, nil
}

// parseBootTime returns btime (seconds since the epoch) from /proc/stat.
func parseBootTime(b []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "btime "); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("no btime line")
}

// parseMaxOpenFiles returns the soft limit of "Max open files" from
// /proc/PID/limits, or -1 when it is unlimited.
func parseMaxOpenFiles(b []byte) (float64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Max open files")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			break
		}
		if f[0] == "unlimited" {
			return -1, nil
		}
		return strconv.ParseFloat(f[0], 64)
	}
	return 0, errors.New("no \"Max open files\" line")
}

// writeProcess writes the standard process_* families for this process. Each
// figure whose source cannot be read is left out rather than reported as 0,
// which a dashboard could not tell from a real 0.
func writeProcess(w *countWriter) {
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		if st, err := parseProcStat(b, os.Getpagesize()); err == nil {
			w.printf("# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %s\n", formatFloat(st.cpuSeconds))
			w.printf("# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %d\n", st.rssBytes)
			w.printf("# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes %d\n", st.vsizeBytes)
			if sb, err := os.ReadFile("/proc/stat"); err == nil {
				if boot, err := parseBootTime(sb); err == nil {
					start := float64(boot) + float64(st.startTicks)/userHZ
					w.printf("# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %s\n", formatFloat(start))
				}
			}
		}
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		// ReadDir holds one descriptor of its own while it reads, as the
		// official collector's count does too.
		w.printf("# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds %d\n", len(fds))
	}
	if b, err := os.ReadFile("/proc/self/limits"); err == nil {
		if max, err := parseMaxOpenFiles(b); err == nil {
			w.printf("# HELP process_max_fds Maximum number of open file descriptors.\n# TYPE process_max_fds gauge\nprocess_max_fds %s\n", formatFloat(max))
		}
	}
}
