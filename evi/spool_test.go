package evi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/internal/metrics"
)

func newTestSpool(t *testing.T, dir string, cfg SpoolConfig) (*Spool, *metrics.Registry) {
	t.Helper()
	cfg.Dir = dir
	reg := metrics.New()
	s, err := NewSpool(cfg, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s, reg
}

func seqEvent(i int) *Event {
	return &Event{Name: "E_SEQ", Params: []byte(fmt.Sprintf(`{"seq":%d}`, i)), Received: time.Now(), Source: "test"}
}

// drain pops every waiting event and returns their params joined.
func drain(q *RouteSpool) string {
	var got []string
	for {
		ev, ok := q.Peek()
		if !ok {
			return strings.Join(got, ",")
		}
		got = append(got, string(ev.Params))
		q.Pop()
	}
}

func TestSpoolOrderAndRestart(t *testing.T) {
	dir := t.TempDir()
	s, _ := newTestSpool(t, dir, SpoolConfig{SegmentBytes: 200}) // a few records per segment
	q, err := s.Route("rabbit/1")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if err := q.Append(seqEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 5; i++ {
		ev, _ := q.Peek()
		if string(ev.Params) != fmt.Sprintf(`{"seq":%d}`, i) || ev.Name != "E_SEQ" || ev.Source != "test" {
			t.Fatalf("peek %d = %+v", i, ev)
		}
		q.Pop()
	}
	s.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "rabbit_1", "*.seg"))
	if len(segs) < 3 {
		t.Errorf("%d segments: rotation did not happen", len(segs))
	}

	// A new process finds the 15 undelivered events, in order.
	s2, _ := newTestSpool(t, dir, SpoolConfig{SegmentBytes: 200})
	defer s2.Close()
	q2, _ := s2.Route("rabbit/1")
	if q2.Len() != 15 {
		t.Fatalf("after restart: %d waiting, want 15", q2.Len())
	}
	var want []string
	for i := 5; i < 20; i++ {
		want = append(want, fmt.Sprintf(`{"seq":%d}`, i))
	}
	if got := drain(q2); got != strings.Join(want, ",") {
		t.Errorf("replayed %s", got)
	}
	after, _ := filepath.Glob(filepath.Join(dir, "rabbit_1", "*.seg"))
	if len(after) > 1 {
		t.Errorf("delivered segments not removed: %v", after)
	}
}

func TestSpoolCorruption(t *testing.T) {
	dir := t.TempDir()
	s, _ := newTestSpool(t, dir, SpoolConfig{})
	q, _ := s.Route("r")
	for i := 0; i < 10; i++ {
		q.Append(seqEvent(i))
	}
	s.Close()
	seg := filepath.Join(dir, "r", segName(1))
	data, _ := os.ReadFile(seg)
	rec := len(data) / 10
	// Flip bytes inside record 3's payload, and cut the last record short.
	data[3*rec+recordHeader+5] ^= 0xff
	data = data[:len(data)-4]
	os.WriteFile(seg, data, 0o640)

	s2, reg := newTestSpool(t, dir, SpoolConfig{})
	defer s2.Close()
	q2, _ := s2.Route("r")
	got := drain(q2)
	want := `{"seq":0},{"seq":1},{"seq":2},{"seq":4},{"seq":5},{"seq":6},{"seq":7},{"seq":8}`
	if got != want {
		t.Errorf("replayed %s\nwant     %s", got, want)
	}
	var b strings.Builder
	reg.WriteTo(&b)
	if !strings.Contains(b.String(), `sipside_spool_dropped_total{route="r",reason="corrupt"} 2`) {
		t.Errorf("corrupt records not counted:\n%s", b.String())
	}
	// The torn tail was cut: new appends land after the last good record.
	q2.Append(seqEvent(99))
	if got := drain(q2); got != `{"seq":99}` {
		t.Errorf("after the torn tail: %s", got)
	}
}

func TestSpoolFull(t *testing.T) {
	size := int64(len(appendRecord(nil, encodeEvent(seqEvent(0), 0))))
	for _, tt := range []struct {
		onFull string
		want   string
		errs   int
	}{
		{dropOldest, `{"seq":2},{"seq":3},{"seq":4}`, 0},
		{dropNewest, `{"seq":0},{"seq":1},{"seq":2}`, 2},
	} {
		t.Run(tt.onFull, func(t *testing.T) {
			s, _ := newTestSpool(t, t.TempDir(), SpoolConfig{MaxBytes: 3 * size, SegmentBytes: size, OnFull: tt.onFull})
			defer s.Close()
			q, _ := s.Route("r")
			errs := 0
			for i := 0; i < 5; i++ {
				if err := q.Append(seqEvent(i)); err != nil {
					errs++
				}
			}
			if got := drain(q); got != tt.want || errs != tt.errs {
				t.Errorf("got %s (%d errors), want %s (%d)", got, errs, tt.want, tt.errs)
			}
		})
	}
}

func TestSpoolMaxAge(t *testing.T) {
	s, _ := newTestSpool(t, t.TempDir(), SpoolConfig{MaxAge: config.Duration(time.Minute)})
	defer s.Close()
	q, _ := s.Route("r")
	old := seqEvent(1)
	old.Received = time.Now().Add(-time.Hour)
	q.Append(old)
	q.Append(seqEvent(2))
	if got := drain(q); got != `{"seq":2}` {
		t.Errorf("got %s", got)
	}
}

// A route whose backend is down spools; when it comes back the spool is
// replayed first, in order, and new events never overtake spooled ones.
func TestRouterSpoolReplay(t *testing.T) {
	s, _ := newTestSpool(t, t.TempDir(), SpoolConfig{Retry: config.Duration(20 * time.Millisecond)})
	defer s.Close()
	m := NewMetrics(metrics.New())
	r, err := NewRouter([]RouteConfig{{Name: "sp", To: "test:spooled"}}, Deps{}, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.spool = s
	b := tb("spooled")
	b.fail.Store(true)
	r.Start()
	var mu sync.Mutex
	var acks []error
	for i := 0; i < 50; i++ {
		ev := seqEvent(i)
		ev.OnDone(func(err error) { mu.Lock(); acks = append(acks, err); mu.Unlock() })
		r.Accept(ev)
	}
	q, _ := s.Route("sp")
	checkFor(t, 5*time.Second, "50 events spooled", func() bool { return q.Len() == 50 })
	b.fail.Store(false)
	for i := 50; i < 100; i++ {
		r.Accept(seqEvent(i))
	}
	checkFor(t, 10*time.Second, "100 deliveries", func() bool { return b.count() == 100 })
	var want []string
	for i := 0; i < 100; i++ {
		want = append(want, fmt.Sprintf(`{"seq":%d}`, i))
	}
	if got := b.received(); got != strings.Join(want, ",") {
		t.Errorf("delivered out of order or incomplete:\n%s", got)
	}
	mu.Lock()
	for i, err := range acks {
		if err != nil {
			t.Errorf("ack %d = %v: a spooled event is safe and must be acknowledged", i, err)
		}
	}
	mu.Unlock()
	r.Close(context.Background())
}

func FuzzSpoolRecord(f *testing.F) {
	f.Add(appendRecord(nil, encodeEvent(seqEvent(1), 0)))
	f.Add(appendRecord(nil, encodeEvent(&Event{Name: "E", Received: time.Unix(0, 5)}, 0)))
	f.Add([]byte("SPL1\x05\x00\x00\x00garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, n, err := readRecord(b)
		if err == nil {
			if n > len(b) || n < recordHeader {
				t.Fatalf("size %d of %d bytes", n, len(b))
			}
			if ev, err := decodeEvent(p); err == nil {
				again := encodeEvent(ev, 0)
				ev2, err := decodeEvent(again)
				if err != nil || ev2.Name != ev.Name || string(ev2.Params) != string(ev.Params) || ev2.Source != ev.Source {
					t.Fatalf("round trip: %v", err)
				}
			}
		}
		if i := resync(b); i < 0 || i > len(b) {
			t.Fatalf("resync = %d", i)
		}
	})
}

// Records written ahead: one confirmed later is never replayed, one whose
// outcome the process did not live to learn is replayed after a restart and
// counted as a possible duplicate.
func TestSpoolWriteAhead(t *testing.T) {
	dir := t.TempDir()
	s, _ := newTestSpool(t, dir, SpoolConfig{})
	q, _ := s.Route("r")
	r0, err := q.AppendAhead(seqEvent(0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.AppendAhead(seqEvent(1)); err != nil {
		t.Fatal(err)
	}
	q.Append(seqEvent(2))
	q.MarkDone(r0)
	q.MarkDone(r0) // twice is harmless
	if q.Len() != 2 {
		t.Fatalf("Len = %d after one of three was confirmed, want 2", q.Len())
	}
	s.Close() // the outcome of seq 1 never came: a crash, as far as the spool knows

	s2, reg := newTestSpool(t, dir, SpoolConfig{})
	defer s2.Close()
	q2, _ := s2.Route("r")
	if got := drain(q2); got != `{"seq":1},{"seq":2}` {
		t.Errorf("replayed %s, want seq 1 and 2", got)
	}
	var b strings.Builder
	reg.WriteTo(&b)
	if !strings.Contains(b.String(), `sipside_spool_duplicates_total{route="r"} 1`) {
		t.Errorf("the replay of the record written ahead is not counted:\n%s", b.String())
	}
}
