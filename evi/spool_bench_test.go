package evi

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkSpool writes b.N events to a route's spool and replays them, for
// each fsync policy, beside a raw sequential file write of the same record
// bytes under the same policy (always = fsync per record, interval = fsync
// every 100 ms, never = none).
func BenchmarkSpool(b *testing.B) {
	ev := &Event{Name: "E_UL_CONTACT_INSERT", Params: benchPayload[48 : len(benchPayload)-1], Received: time.Now(), Source: "udp:127.0.0.1:8090"}
	rec := appendRecord(nil, encodeEvent(ev, 0))
	for _, policy := range []string{fsyncNever, fsyncInterval, fsyncAlways} {
		b.Run("write/fsync="+policy, func(b *testing.B) {
			s, _ := NewSpool(SpoolConfig{Dir: b.TempDir(), Fsync: policy, MaxBytes: 8 << 30}, nil, nil)
			defer s.Close()
			q, _ := s.Route("bench")
			b.SetBytes(int64(len(rec)))
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if err := q.Append(ev); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		})
		b.Run("raw-write/fsync="+policy, func(b *testing.B) {
			f, err := os.OpenFile(filepath.Join(b.TempDir(), "raw"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			b.SetBytes(int64(len(rec)))
			b.ResetTimer()
			start := time.Now()
			last := start
			for i := 0; i < b.N; i++ {
				if _, err := f.Write(rec); err != nil {
					b.Fatal(err)
				}
				switch policy {
				case fsyncAlways:
					f.Sync()
				case fsyncInterval:
					if time.Since(last) >= 100*time.Millisecond {
						f.Sync()
						last = time.Now()
					}
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		})
	}
	b.Run("replay", func(b *testing.B) {
		s, _ := NewSpool(SpoolConfig{Dir: b.TempDir(), Fsync: fsyncNever, MaxBytes: 8 << 30}, nil, nil)
		defer s.Close()
		q, _ := s.Route("bench")
		for i := 0; i < b.N; i++ {
			q.Append(ev)
		}
		b.SetBytes(int64(len(rec)))
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < b.N; i++ {
			if _, ok := q.Peek(); !ok {
				b.Fatalf("spool empty after %d", i)
			}
			q.Pop()
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	})
	b.Run("raw-read", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "raw")
		data := make([]byte, 0, len(rec)*b.N)
		for i := 0; i < b.N; i++ {
			data = append(data, rec...)
		}
		os.WriteFile(path, data, 0o640)
		b.SetBytes(int64(len(rec)))
		b.ResetTimer()
		start := time.Now()
		f, _ := os.Open(path)
		defer f.Close()
		buf := make([]byte, len(rec))
		for i := 0; i < b.N; i++ {
			if _, err := f.ReadAt(buf, int64(i*len(rec))); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	})
}
