// Package metrics is a small Prometheus text-format registry shared by
// sipside's packages. It exists so that every package can count what it does
// without a global registry and without pulling in the Prometheus client
// library, whose weight buys us nothing for a handful of counters.
package metrics

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type kind int

const (
	kindCounter kind = iota
	kindGauge
	kindHistogram
)

func (k kind) String() string {
	switch k {
	case kindCounter:
		return "counter"
	case kindGauge:
		return "gauge"
	default:
		return "histogram"
	}
}

// Registry holds metric families. The zero value is not usable; use New.
type Registry struct {
	mu       sync.Mutex
	families map[string]*family
	start    time.Time
}

// New returns an empty registry.
func New() *Registry {
	return &Registry{families: make(map[string]*family), start: time.Now()}
}

// OrNew returns r, or a fresh private registry when r is nil, so that
// packages can take an optional registry without nil checks everywhere.
func OrNew(r *Registry) *Registry {
	if r == nil {
		return New()
	}
	return r
}

type family struct {
	name    string
	help    string
	kind    kind
	labels  []string
	buckets []float64

	mu       sync.RWMutex
	children map[string]*child
}

type child struct {
	values []string
	// counter and gauge: bits of a float64 in val (gauges) or integer count (counters)
	val atomic.Uint64
	// histogram
	hmu    sync.Mutex
	counts []uint64
	sum    float64
	count  uint64
}

func (r *Registry) register(name, help string, k kind, buckets []float64, labels []string) *family {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f, ok := r.families[name]; ok {
		if f.kind != k || strings.Join(f.labels, ",") != strings.Join(labels, ",") {
			panic(fmt.Sprintf("metrics: %s registered twice with different kind or labels", name))
		}
		return f
	}
	f := &family{name: name, help: help, kind: k, labels: labels, buckets: buckets, children: make(map[string]*child)}
	r.families[name] = f
	return f
}

func (f *family) with(values []string) *child {
	if len(values) != len(f.labels) {
		panic(fmt.Sprintf("metrics: %s wants %d label values, got %d", f.name, len(f.labels), len(values)))
	}
	key := strings.Join(values, "\xff")
	f.mu.RLock()
	c, ok := f.children[key]
	f.mu.RUnlock()
	if ok {
		return c
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok = f.children[key]; ok {
		return c
	}
	c = &child{values: append([]string(nil), values...)}
	if f.kind == kindHistogram {
		c.counts = make([]uint64, len(f.buckets))
	}
	f.children[key] = c
	return c
}

// CounterVec is a family of counters that differ by label values.
type CounterVec struct{ f *family }

// Counter is one monotonically increasing count.
type Counter struct{ c *child }

// Counter registers (or returns the already registered) counter family.
func (r *Registry) Counter(name, help string, labels ...string) *CounterVec {
	return &CounterVec{r.register(name, help, kindCounter, nil, labels)}
}

// With returns the counter for these label values, creating it at zero.
// Callers on hot paths should keep the result instead of calling With per event.
func (v *CounterVec) With(values ...string) *Counter { return &Counter{v.f.with(values)} }

// Inc adds one.
func (c *Counter) Inc() { c.c.val.Add(1) }

// Add adds n.
func (c *Counter) Add(n uint64) { c.c.val.Add(n) }

// Value returns the current count.
func (c *Counter) Value() uint64 { return c.c.val.Load() }

// GaugeVec is a family of gauges.
type GaugeVec struct{ f *family }

// Gauge is a value that goes up and down.
type Gauge struct{ c *child }

// Gauge registers (or returns) a gauge family.
func (r *Registry) Gauge(name, help string, labels ...string) *GaugeVec {
	return &GaugeVec{r.register(name, help, kindGauge, nil, labels)}
}

// With returns the gauge for these label values.
func (v *GaugeVec) With(values ...string) *Gauge { return &Gauge{v.f.with(values)} }

// Set sets the gauge.
func (g *Gauge) Set(x float64) { g.c.val.Store(math.Float64bits(x)) }

// Add adds x (which may be negative).
func (g *Gauge) Add(x float64) {
	for {
		old := g.c.val.Load()
		if g.c.val.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+x)) {
			return
		}
	}
}

// Value returns the gauge's value.
func (g *Gauge) Value() float64 { return math.Float64frombits(g.c.val.Load()) }

// HistogramVec is a family of histograms.
type HistogramVec struct{ f *family }

// Histogram counts observations into buckets.
type Histogram struct {
	c       *child
	buckets []float64
}

// DefaultBuckets suit latencies in seconds from 100µs to 10s.
var DefaultBuckets = []float64{.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Histogram registers (or returns) a histogram family; nil buckets means DefaultBuckets.
func (r *Registry) Histogram(name, help string, buckets []float64, labels ...string) *HistogramVec {
	if buckets == nil {
		buckets = DefaultBuckets
	}
	return &HistogramVec{r.register(name, help, kindHistogram, buckets, labels)}
}

// With returns the histogram for these label values.
func (v *HistogramVec) With(values ...string) *Histogram {
	return &Histogram{c: v.f.with(values), buckets: v.f.buckets}
}

// Observe records one value.
func (h *Histogram) Observe(x float64) {
	i := sort.SearchFloat64s(h.buckets, x)
	h.c.hmu.Lock()
	if i < len(h.c.counts) {
		h.c.counts[i]++
	}
	h.c.sum += x
	h.c.count++
	h.c.hmu.Unlock()
}

// Since records the seconds elapsed since t.
func (h *Histogram) Since(t time.Time) { h.Observe(time.Since(t).Seconds()) }

// Count returns how many values were observed.
func (h *Histogram) Count() uint64 {
	h.c.hmu.Lock()
	defer h.c.hmu.Unlock()
	return h.c.count
}

// Names returns the registered family names, sorted.
func (r *Registry) Names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	names := make([]string, 0, len(r.families))
	for n := range r.families {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// WriteTo writes every family in the Prometheus text exposition format
// (version 0.0.4), followed by Go runtime figures and the standard process_*
// families, all computed at the time of the call.
func (r *Registry) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: bufio.NewWriter(w)}
	for _, name := range r.Names() {
		r.mu.Lock()
		f := r.families[name]
		r.mu.Unlock()
		f.write(cw)
	}
	r.writeRuntime(cw)
	if err := cw.w.Flush(); err != nil {
		return cw.n, fmt.Errorf("write metrics: %w", err)
	}
	return cw.n, cw.err
}

type countWriter struct {
	w   *bufio.Writer
	n   int64
	err error
}

func (c *countWriter) printf(format string, a ...any) {
	if c.err != nil {
		return
	}
	n, err := fmt.Fprintf(c.w, format, a...)
	c.n += int64(n)
	c.err = err
}

func (f *family) write(w *countWriter) {
	w.printf("# HELP %s %s\n# TYPE %s %s\n", f.name, escapeHelp(f.help), f.name, f.kind)
	f.mu.RLock()
	kids := make([]*child, 0, len(f.children))
	for _, c := range f.children {
		kids = append(kids, c)
	}
	f.mu.RUnlock()
	sort.Slice(kids, func(i, j int) bool {
		return strings.Join(kids[i].values, "\xff") < strings.Join(kids[j].values, "\xff")
	})
	for _, c := range kids {
		lbl := labelString(f.labels, c.values, "", "")
		switch f.kind {
		case kindCounter:
			w.printf("%s%s %d\n", f.name, lbl, c.val.Load())
		case kindGauge:
			w.printf("%s%s %s\n", f.name, lbl, formatFloat(math.Float64frombits(c.val.Load())))
		case kindHistogram:
			c.hmu.Lock()
			var cum uint64
			for i, b := range f.buckets {
				cum += c.counts[i]
				w.printf("%s_bucket%s %d\n", f.name, labelString(f.labels, c.values, "le", formatFloat(b)), cum)
			}
			w.printf("%s_bucket%s %d\n", f.name, labelString(f.labels, c.values, "le", "+Inf"), c.count)
			w.printf("%s_sum%s %s\n%s_count%s %d\n", f.name, lbl, formatFloat(c.sum), f.name, lbl, c.count)
			c.hmu.Unlock()
		}
	}
}

func (r *Registry) writeRuntime(w *countWriter) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w.printf("# HELP go_goroutines Number of goroutines that currently exist.\n# TYPE go_goroutines gauge\ngo_goroutines %d\n", runtime.NumGoroutine())
	w.printf("# HELP go_memstats_heap_alloc_bytes Bytes of allocated heap objects.\n# TYPE go_memstats_heap_alloc_bytes gauge\ngo_memstats_heap_alloc_bytes %d\n", ms.HeapAlloc)
	w.printf("# HELP go_memstats_heap_inuse_bytes Bytes in in-use heap spans.\n# TYPE go_memstats_heap_inuse_bytes gauge\ngo_memstats_heap_inuse_bytes %d\n", ms.HeapInuse)
	w.printf("# HELP go_memstats_heap_idle_bytes Bytes in idle (unused) heap spans.\n# TYPE go_memstats_heap_idle_bytes gauge\ngo_memstats_heap_idle_bytes %d\n", ms.HeapIdle)
	w.printf("# HELP go_memstats_heap_sys_bytes Bytes of heap memory obtained from the OS.\n# TYPE go_memstats_heap_sys_bytes gauge\ngo_memstats_heap_sys_bytes %d\n", ms.HeapSys)
	w.printf("# HELP go_memstats_heap_objects Number of allocated heap objects.\n# TYPE go_memstats_heap_objects gauge\ngo_memstats_heap_objects %d\n", ms.HeapObjects)
	w.printf("# HELP go_memstats_sys_bytes Bytes obtained from the OS.\n# TYPE go_memstats_sys_bytes gauge\ngo_memstats_sys_bytes %d\n", ms.Sys)
	w.printf("# HELP go_info Information about the Go environment.\n# TYPE go_info gauge\ngo_info{version=\"%s\"} 1\n", escapeLabel(runtime.Version()))
	w.printf("# HELP go_gc_cycles_total Completed GC cycles.\n# TYPE go_gc_cycles_total counter\ngo_gc_cycles_total %d\n", ms.NumGC)
	w.printf("# HELP process_uptime_seconds Seconds since the registry was created.\n# TYPE process_uptime_seconds gauge\nprocess_uptime_seconds %s\n", formatFloat(time.Since(r.start).Seconds()))
	writeProcess(w)
}

func labelString(names, values []string, extraName, extraValue string) string {
	if len(names) == 0 && extraName == "" {
		return ""
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(n)
		b.WriteString(`="`)
		b.WriteString(escapeLabel(values[i]))
		b.WriteByte('"')
	}
	if extraName != "" {
		if len(names) > 0 {
			b.WriteByte(',')
		}
		b.WriteString(extraName)
		b.WriteString(`="`)
		b.WriteString(extraValue)
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
var helpEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }
func escapeHelp(s string) string  { return helpEscaper.Replace(s) }

func formatFloat(x float64) string {
	switch {
	case math.IsInf(x, 1):
		return "+Inf"
	case math.IsInf(x, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(x, 'g', -1, 64)
}
