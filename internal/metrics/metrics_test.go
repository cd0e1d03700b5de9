package metrics

import (
	"strings"
	"sync"
	"testing"
)

func TestExposition(t *testing.T) {
	r := New()
	c := r.Counter("sipside_test_total", "A test counter.", "input")
	c.With(`udp:127.0.0.1:8090`).Add(3)
	c.With(`a"b\c` + "\n").Inc()
	g := r.Gauge("sipside_test_gauge", "A gauge.")
	g.With().Set(1.5)
	g.With().Add(-0.5)
	h := r.Histogram("sipside_test_seconds", "A histogram.", []float64{0.1, 1}, "route")
	h.With("r").Observe(0.05)
	h.With("r").Observe(0.5)
	h.With("r").Observe(5)
	var b strings.Builder
	if _, err := r.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"# HELP sipside_test_total A test counter.\n# TYPE sipside_test_total counter\n",
		`sipside_test_total{input="a\"b\\c\n"} 1` + "\n",
		`sipside_test_total{input="udp:127.0.0.1:8090"} 3` + "\n",
		"# TYPE sipside_test_gauge gauge\nsipside_test_gauge 1\n",
		`sipside_test_seconds_bucket{route="r",le="0.1"} 1` + "\n",
		`sipside_test_seconds_bucket{route="r",le="1"} 2` + "\n",
		`sipside_test_seconds_bucket{route="r",le="+Inf"} 3` + "\n",
		`sipside_test_seconds_sum{route="r"} 5.55` + "\n",
		`sipside_test_seconds_count{route="r"} 3` + "\n",
		"go_goroutines ",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in:\n%s", want, b.String())
		}
	}
	if got := r.Names(); len(got) != 3 || got[0] != "sipside_test_gauge" {
		t.Errorf("Names = %v", got)
	}
}

func TestRegisterTwice(t *testing.T) {
	r := New()
	a := r.Counter("x_total", "x", "l")
	b := r.Counter("x_total", "x", "l")
	a.With("1").Inc()
	if b.With("1").Value() != 1 {
		t.Error("second registration is not the same family")
	}
	defer func() {
		if recover() == nil {
			t.Error("no panic on a conflicting registration")
		}
	}()
	r.Gauge("x_total", "x")
}

func TestConcurrent(t *testing.T) {
	r := New()
	c := r.Counter("c_total", "c", "k")
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 1000; j++ {
				c.With("k").Inc()
				r.WriteTo(&strings.Builder{})
			}
		}()
	}
	wg.Wait()
	if v := c.With("k").Value(); v != 8000 {
		t.Errorf("count = %d", v)
	}
}
