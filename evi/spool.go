package evi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/internal/metrics"
)

// SpoolConfig is [spool]: where events that no backend took wait, on
// disk, to be replayed in order once a backend takes them again.
type SpoolConfig struct {
	Dir           string          `toml:"dir"`            // "" = no spool: undeliverable events are counted, logged and lost
	MaxBytes      int64           `toml:"max_bytes"`      // per route; default 1 GiB
	MaxAge        config.Duration `toml:"max_age"`        // older events are dropped at replay; default 24h
	Fsync         string          `toml:"fsync"`          // always | interval | never; default interval
	FsyncInterval config.Duration `toml:"fsync_interval"` // default 100ms
	OnFull        string          `toml:"on_full"`        // drop_oldest | drop_newest; default drop_oldest
	SegmentBytes  int64           `toml:"segment_bytes"`  // default 16 MiB
	Retry         config.Duration `toml:"retry_interval"` // how often a failing head is retried; default 1s
	// SpillAfter bounds how long an event stays only in memory: one that no
	// backend confirmed this long after it arrived (queued, or in flight on
	// a backend that is dialling, blocked or hung) is written to the spool,
	// so that it survives a crash and a proxy waiting for the outcome
	// (event_stream reliable_mode) gets its answer in time.
	SpillAfter config.Duration `toml:"spill_after"` // default 250ms
}

const (
	fsyncAlways   = "always"
	fsyncInterval = "interval"
	fsyncNever    = "never"
	dropOldest    = "drop_oldest"
	dropNewest    = "drop_newest"
)

// WithDefaults fills in every unset key.
func (c SpoolConfig) WithDefaults() SpoolConfig {
	if c.MaxBytes == 0 {
		c.MaxBytes = 1 << 30
	}
	if c.MaxAge == 0 {
		c.MaxAge = config.Duration(24 * time.Hour)
	}
	if c.Fsync == "" {
		c.Fsync = fsyncInterval
	}
	if c.FsyncInterval == 0 {
		c.FsyncInterval = config.Duration(100 * time.Millisecond)
	}
	if c.OnFull == "" {
		c.OnFull = dropOldest
	}
	if c.SegmentBytes == 0 {
		c.SegmentBytes = 16 << 20
	}
	if c.Retry == 0 {
		c.Retry = config.Duration(time.Second)
	}
	if c.SpillAfter == 0 {
		c.SpillAfter = config.Duration(250 * time.Millisecond)
	}
	return c
}

// Check reports what is wrong with [spool] (keys relative to p).
func (c SpoolConfig) Check(p *config.Problems) {
	c = c.WithDefaults()
	switch c.Fsync {
	case fsyncAlways, fsyncInterval, fsyncNever:
	default:
		p.Add("fsync", "%q: want always, interval or never", c.Fsync)
	}
	switch c.OnFull {
	case dropOldest, dropNewest:
	default:
		p.Add("on_full", "%q: want drop_oldest or drop_newest", c.OnFull)
	}
	if c.Dir != "" && !filepath.IsAbs(c.Dir) {
		p.Add("dir", "%q: want an absolute path, e.g. /var/lib/sipside/spool", c.Dir)
	}
	for key, v := range map[string]int64{"max_bytes": c.MaxBytes, "segment_bytes": c.SegmentBytes} {
		if v < 0 {
			p.Add(key, "%d: must not be negative", v)
		}
	}
	for key, v := range map[string]config.Duration{"max_age": c.MaxAge, "fsync_interval": c.FsyncInterval, "retry_interval": c.Retry, "spill_after": c.SpillAfter} {
		if v < 0 {
			p.Add(key, "%v: must not be negative", v)
		}
	}
	if c.SegmentBytes > c.MaxBytes && c.MaxBytes > 0 {
		p.Add("segment_bytes", "%d is larger than max_bytes (%d)", c.SegmentBytes, c.MaxBytes)
	}
}

// Validate is Check as one error, its keys under "spool".
func (c SpoolConfig) Validate() error {
	var p config.Problems
	c.Check(p.At("spool"))
	return p.Err()
}

// Spool hands out one on-disk queue per route, kept for the life of the
// process so that a config reload hands the same queue to the new router.
type Spool struct {
	cfg SpoolConfig
	log *slog.Logger
	m   *spoolMetrics

	mu     sync.Mutex
	queues map[string]*RouteSpool
}

type spoolMetrics struct {
	events, bytes, oldest *metrics.GaugeVec
	maxBytes              *metrics.GaugeVec
	spooled, replayed     *metrics.CounterVec
	dropped, duplicates   *metrics.CounterVec
}

// NewSpool prepares cfg.Dir; it returns nil, nil when the spool is off.
func NewSpool(cfg SpoolConfig, reg *metrics.Registry, log *slog.Logger) (*Spool, error) {
	if cfg.Dir == "" {
		return nil, nil
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("spool dir: %w (set [spool] dir to a writable directory)", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg = metrics.OrNew(reg)
	return &Spool{cfg: cfg, log: log, queues: map[string]*RouteSpool{}, m: &spoolMetrics{
		events:   reg.Gauge("sipside_spool_events", "Events waiting in a route's spool.", "route"),
		bytes:    reg.Gauge("sipside_spool_bytes", "Bytes of a route's spool on disk.", "route"),
		oldest:   reg.Gauge("sipside_spool_oldest_age_seconds", "Age of the oldest spooled event of a route.", "route"),
		maxBytes: reg.Gauge("sipside_spool_max_bytes", "The spool's max_bytes: what a route's spool may hold before on_full drops.", "route"),
		spooled:  reg.Counter("sipside_spool_spooled_total", "Events written to a route's spool.", "route"),
		replayed: reg.Counter("sipside_spool_replayed_total", "Spooled events delivered.", "route"),
		dropped:  reg.Counter("sipside_spool_dropped_total", "Spooled events lost, by reason (full, age, corrupt, write_error).", "route", "reason"),
		duplicates: reg.Counter("sipside_spool_duplicates_total",
			"Events replayed after a restart that a backend may already have taken: they were written ahead while in flight and their outcome was not on disk when sipside stopped.", "route"),
	}}, nil
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// Route returns the queue of route, opening (and recovering) it on first use.
func (s *Spool) Route(route string) (*RouteSpool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if q, ok := s.queues[route]; ok {
		return q, nil
	}
	dir := filepath.Join(s.cfg.Dir, spoolDirName(route))
	q, err := openRouteSpool(dir, route, s.cfg, s.m, s.log.With("route", route))
	if err != nil {
		return nil, err
	}
	s.queues[route] = q
	return q, nil
}

func spoolDirName(route string) string { return unsafeName.ReplaceAllString(route, "_") }

// Prune deals with the spool directories of routes that are not in routes
// (removed from the config, or left by an earlier one): an empty one is
// deleted; one that still holds events is kept, logged and shown in
// sipside_spool_events under its directory's name, because deleting it
// would lose them. It returns the directories it kept.
func (s *Spool) Prune(routes []string) (kept []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := map[string]bool{}
	for _, r := range routes {
		want[spoolDirName(r)] = true
	}
	entries, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		s.log.Warn("spool: cannot list the spool directory to clean up removed routes", "dir", s.cfg.Dir, "error", err)
		return nil
	}
	for _, e := range entries {
		if !e.IsDir() || want[e.Name()] {
			continue
		}
		dir := filepath.Join(s.cfg.Dir, e.Name())
		var q *RouteSpool
		for name, open := range s.queues {
			if spoolDirName(name) == e.Name() {
				q = open
				delete(s.queues, name)
			}
		}
		if q == nil {
			q, err = openRouteSpool(dir, e.Name(), s.cfg, s.m, s.log.With("route", e.Name()))
			if err != nil {
				s.log.Warn("spool: cannot read the spool of a route that is not configured; left as it is", "dir", dir, "error", err)
				continue
			}
		}
		n := q.Len()
		q.Close()
		if n > 0 {
			s.log.Warn("spool: a route that is not configured (any more) still has events on disk; they stay there: add the route back with the same name to deliver them, or delete the directory",
				"dir", dir, "events", n)
			kept = append(kept, dir)
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			s.log.Warn("spool: cannot delete the empty spool of a removed route", "dir", dir, "error", err)
			continue
		}
		s.log.Info("spool: deleted the empty spool of a route that is not configured", "dir", dir)
	}
	return kept
}

// Close syncs and closes every queue.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, q := range s.queues {
		errs = append(errs, q.Close())
	}
	return errors.Join(errs...)
}

// Record layout, little endian: magic "SPL1", payload length u32,
// CRC-32C of the payload u32, payload. The magic lets a reader find the
// next record after a corrupt one.
var recordMagic = [4]byte{'S', 'P', 'L', '1'}

const (
	recordHeader = 12
	maxRecord    = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Payload versions: 1 is the event; 2 is a flags byte, then what 1 holds.
// Version 1 is still written for plain records, so that a spool written by
// this release can be read by the one before it as long as nothing was
// written ahead.
const (
	payloadV1 = 1
	payloadV2 = 2

	// flagAhead marks a record written while its event was in flight: the
	// backend may take it after all, so a replay after a crash may be a
	// duplicate.
	flagAhead = 1 << 0
)

// encodeEvent is the payload of one record.
func encodeEvent(ev *Event, flags byte) []byte {
	b := make([]byte, 0, 32+len(ev.Name)+len(ev.Source)+len(ev.Params))
	if flags == 0 {
		b = append(b, payloadV1)
	} else {
		b = append(b, payloadV2, flags)
	}
	b = binary.LittleEndian.AppendUint64(b, uint64(ev.Received.UnixNano()))
	b = binary.AppendUvarint(b, uint64(len(ev.Name)))
	b = append(b, ev.Name...)
	b = binary.AppendUvarint(b, uint64(len(ev.Source)))
	b = append(b, ev.Source...)
	if ev.Params == nil {
		b = append(b, 0)
	} else {
		b = append(b, 1)
		b = binary.AppendUvarint(b, uint64(len(ev.Params)))
		b = append(b, ev.Params...)
	}
	return b
}

func decodeEvent(b []byte) (*Event, error) {
	ev, _, err := decodeRecord(b)
	return ev, err
}

// decodeRecord is decodeEvent that also returns the record's flags.
func decodeRecord(b []byte) (*Event, byte, error) {
	var flags byte
	if len(b) > 1 && b[0] == payloadV2 {
		flags = b[1]
		b = b[1:] // the rest reads as version 1 from the flags byte on
	} else if len(b) == 0 || b[0] != payloadV1 {
		return nil, 0, errors.New("unknown spool record version")
	}
	ev, err := decodeV1(b)
	return ev, flags, err
}

func decodeV1(b []byte) (*Event, error) {
	if len(b) < 9 {
		return nil, errors.New("truncated spool record")
	}
	ev := &Event{Received: time.Unix(0, int64(binary.LittleEndian.Uint64(b[1:9])))}
	b = b[9:]
	str := func() (string, error) {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return "", errors.New("truncated string in spool record")
		}
		s := string(b[k : k+int(n)])
		b = b[k+int(n):]
		return s, nil
	}
	var err error
	if ev.Name, err = str(); err != nil {
		return nil, err
	}
	if ev.Source, err = str(); err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nil, errors.New("truncated spool record")
	}
	if b[0] == 1 {
		b = b[1:]
		p, err := str()
		if err != nil {
			return nil, err
		}
		ev.Params = []byte(p)
	}
	return ev, nil
}

func appendRecord(dst, payload []byte) []byte {
	dst = append(dst, recordMagic[:]...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
	dst = binary.LittleEndian.AppendUint32(dst, crc32.Checksum(payload, castagnoli))
	return append(dst, payload...)
}

// errCorrupt marks bytes that are not a valid record.
var errCorrupt = errors.New("corrupt spool record")

// readRecord reads the record at the start of b. It returns the payload and
// its full size, io.ErrUnexpectedEOF when b ends inside the record (a write
// cut short), or errCorrupt.
func readRecord(b []byte) ([]byte, int, error) {
	if len(b) < recordHeader {
		return nil, 0, io.ErrUnexpectedEOF
	}
	if [4]byte(b[:4]) != recordMagic {
		return nil, 0, fmt.Errorf("%w: bad magic", errCorrupt)
	}
	n := binary.LittleEndian.Uint32(b[4:8])
	if n > maxRecord {
		return nil, 0, fmt.Errorf("%w: length %d", errCorrupt, n)
	}
	if len(b) < recordHeader+int(n) {
		return nil, 0, io.ErrUnexpectedEOF
	}
	p := b[recordHeader : recordHeader+int(n)]
	if crc32.Checksum(p, castagnoli) != binary.LittleEndian.Uint32(b[8:12]) {
		return nil, 0, fmt.Errorf("%w: checksum mismatch", errCorrupt)
	}
	return p, recordHeader + int(n), nil
}

// resync finds the next offset after a corrupt record where a valid one starts.
func resync(b []byte) int {
	for i := 1; i+recordHeader <= len(b); i++ {
		if [4]byte(b[i:i+4]) != recordMagic {
			continue
		}
		if _, _, err := readRecord(b[i:]); err == nil {
			return i
		}
	}
	return len(b)
}

// spooled is one event waiting in memory's view of the spool: where its
// record is, so that the cursor can move past it.
type spooled struct {
	seg  uint64
	end  int64 // offset just past the record
	size int64
	recv time.Time
	// done: written ahead and then confirmed by the backend; skipped, never replayed.
	done bool
	// maybeDup: written ahead by an earlier run that stopped before the
	// outcome was known; counted as a possible duplicate when replayed.
	maybeDup bool
}

// SpoolRef names one record of a route's spool, so that an event written
// ahead can be marked confirmed when its backend takes it after all.
type SpoolRef uint64

// RouteSpool is one route's on-disk FIFO: append-only segment files of
// checksummed records and a cursor file naming the first record not yet
// delivered. One goroutine (the route's worker) appends and replays; the
// fsync timer is the only other user.
type RouteSpool struct {
	dir   string
	route string
	cfg   SpoolConfig
	log   *slog.Logger

	events, bytes, oldest    *metrics.Gauge
	spooledC, replayedC      *metrics.Counter
	droppedFull, droppedAge  *metrics.Counter
	droppedCorrupt, writeErr *metrics.Counter
	duplicates               *metrics.Counter

	mu       sync.Mutex
	w        *os.File // the segment being written
	wseg     uint64
	wsize    int64
	dirty    bool // written since the last fsync
	pending  []spooled
	head     int    // index into pending of the first undelivered event
	headSeq  uint64 // SpoolRef of pending[head]; refs are consecutive
	ndone    int    // entries of pending[head:] marked done
	total    int64
	cursor   spooled // last delivered record (seg, end)
	curDirty bool
	rd       *segReader
	stop     chan struct{}
	done     chan struct{}
}

func segName(seq uint64) string { return fmt.Sprintf("%020d.seg", seq) }

func openRouteSpool(dir, route string, cfg SpoolConfig, m *spoolMetrics, log *slog.Logger) (*RouteSpool, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("spool for route %q: %w", route, err)
	}
	q := &RouteSpool{dir: dir, route: route, cfg: cfg, log: log,
		events: m.events.With(route), bytes: m.bytes.With(route), oldest: m.oldest.With(route),
		spooledC: m.spooled.With(route), replayedC: m.replayed.With(route),
		droppedFull: m.dropped.With(route, "full"), droppedAge: m.dropped.With(route, "age"),
		droppedCorrupt: m.dropped.With(route, "corrupt"), writeErr: m.dropped.With(route, "write_error"),
		duplicates: m.duplicates.With(route),
		stop:       make(chan struct{}), done: make(chan struct{})}
	if err := q.recover(); err != nil {
		return nil, fmt.Errorf("spool for route %q in %s: %w", route, dir, err)
	}
	m.maxBytes.With(route).Set(float64(cfg.MaxBytes))
	go q.syncLoop()
	return q, nil
}

// recover rebuilds the in-memory index from the segments past the cursor,
// skipping corrupt records and cutting a torn write at the tail.
func (q *RouteSpool) recover() error {
	if b, err := os.ReadFile(filepath.Join(q.dir, "cursor")); err == nil {
		f := strings.Fields(string(b))
		if len(f) == 2 {
			q.cursor.seg, _ = strconv.ParseUint(f[0], 10, 64)
			q.cursor.end, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	segs, err := q.segments()
	if err != nil {
		return err
	}
	for i, seq := range segs {
		if seq < q.cursor.seg {
			os.Remove(filepath.Join(q.dir, segName(seq)))
			continue
		}
		data, err := os.ReadFile(filepath.Join(q.dir, segName(seq)))
		if err != nil {
			return err
		}
		off := int64(0)
		if seq == q.cursor.seg {
			off = q.cursor.end
		}
		for off < int64(len(data)) {
			p, n, err := readRecord(data[off:])
			if errors.Is(err, io.ErrUnexpectedEOF) {
				q.log.Warn("spool: a record was cut short (crash during a write); dropping its bytes", "segment", segName(seq), "offset", off)
				if i == len(segs)-1 {
					if err := os.Truncate(filepath.Join(q.dir, segName(seq)), off); err != nil {
						return err
					}
					data = data[:off]
				}
				q.droppedCorrupt.Inc()
				break
			}
			if err != nil {
				skip := resync(data[off:])
				q.log.Error("spool: corrupt record skipped", "segment", segName(seq), "offset", off, "skipped_bytes", skip, "error", err)
				q.droppedCorrupt.Inc()
				off += int64(skip)
				continue
			}
			ev, flags, derr := decodeRecord(p)
			recv := time.Time{}
			if derr == nil {
				recv = ev.Received
			}
			off += int64(n)
			q.pending = append(q.pending, spooled{seg: seq, end: off, size: int64(n), recv: recv, maybeDup: flags&flagAhead != 0})
			q.total += int64(n)
		}
		if i == len(segs)-1 {
			q.wseg, q.wsize = seq, int64(len(data))
		}
	}
	if q.wseg == 0 {
		q.wseg = max(q.cursor.seg, 1)
	}
	w, err := os.OpenFile(filepath.Join(q.dir, segName(q.wseg)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	q.w = w
	if n := len(q.pending); n > 0 {
		q.log.Info("spool: events left from an earlier run will be replayed", "events", n, "bytes", q.total)
	}
	q.gauges()
	return nil
}

func (q *RouteSpool) segments() ([]uint64, error) {
	names, err := filepath.Glob(filepath.Join(q.dir, "*.seg"))
	if err != nil {
		return nil, err
	}
	var segs []uint64
	for _, n := range names {
		if seq, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(n), ".seg"), 10, 64); err == nil {
			segs = append(segs, seq)
		}
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i] < segs[j] })
	return segs, nil
}

// Len is the number of events waiting to be replayed (records written
// ahead and since confirmed do not count).
func (q *RouteSpool) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending) - q.head - q.ndone
}

// Append writes ev at the tail. With fsync = always it is on disk when
// Append returns.
func (q *RouteSpool) Append(ev *Event) error {
	_, err := q.append(ev, 0)
	return err
}

// AppendAhead writes ev, which a backend has in flight, at the tail. If the
// backend confirms it later, MarkDone(ref) keeps it from being replayed.
func (q *RouteSpool) AppendAhead(ev *Event) (SpoolRef, error) {
	return q.append(ev, flagAhead)
}

// MarkDone records that the event written ahead as ref was delivered after
// all: replay skips it. Only this process's memory knows it; after a crash
// the record is replayed and counted in sipside_spool_duplicates_total.
func (q *RouteSpool) MarkDone(ref SpoolRef) {
	q.mu.Lock()
	defer q.mu.Unlock()
	seq := uint64(ref)
	if seq < q.headSeq || seq >= q.headSeq+uint64(len(q.pending)-q.head) {
		return // already gone (dropped because the spool was full)
	}
	i := q.head + int(seq-q.headSeq)
	if q.pending[i].done {
		return
	}
	q.pending[i].done = true
	q.ndone++
	// Done records at the head go at once, so that the cursor moves past
	// them and a restart does not replay them.
	for q.head < len(q.pending) && q.pending[q.head].done {
		q.popLocked()
	}
}

func (q *RouteSpool) append(ev *Event, flags byte) (SpoolRef, error) {
	rec := appendRecord(nil, encodeEvent(ev, flags))
	q.mu.Lock()
	defer q.mu.Unlock()
	size := int64(len(rec))
	for q.total+size > q.cfg.MaxBytes {
		if q.head < len(q.pending) && q.pending[q.head].done {
			q.popLocked() // confirmed already: nothing is lost
			continue
		}
		if q.cfg.OnFull == dropNewest || q.head == len(q.pending) {
			q.droppedFull.Inc()
			q.log.Error("spool full: event dropped (on_full = drop_newest); raise [spool] max_bytes or fix the backend", "event", ev.Name, "max_bytes", q.cfg.MaxBytes)
			return 0, fmt.Errorf("spool of route %q is full (%d bytes)", q.route, q.cfg.MaxBytes)
		}
		q.droppedFull.Inc()
		q.log.Error("spool full: oldest event dropped (on_full = drop_oldest); raise [spool] max_bytes or fix the backend", "max_bytes", q.cfg.MaxBytes)
		q.popLocked()
	}
	if q.wsize > 0 && q.wsize+size > q.cfg.SegmentBytes {
		if err := q.rotateLocked(); err != nil {
			q.writeErr.Inc()
			return 0, err
		}
	}
	if _, err := q.w.Write(rec); err != nil {
		q.writeErr.Inc()
		q.log.Error("spool write failed: event lost", "event", ev.Name, "error", err)
		// A partial write would leave a torn record in the middle of the
		// segment; start a fresh segment so the next record is clean.
		_ = q.rotateLocked()
		return 0, fmt.Errorf("spool write: %w", err)
	}
	q.wsize += size
	q.total += size
	ref := SpoolRef(q.headSeq + uint64(len(q.pending)-q.head))
	q.pending = append(q.pending, spooled{seg: q.wseg, end: q.wsize, size: size, recv: ev.Received})
	q.spooledC.Inc()
	if q.cfg.Fsync == fsyncAlways {
		if err := q.w.Sync(); err != nil {
			q.log.Error("spool fsync failed", "error", err)
		}
	} else {
		q.dirty = true
	}
	q.gauges()
	return ref, nil
}

func (q *RouteSpool) rotateLocked() error {
	if q.w != nil {
		if q.cfg.Fsync != fsyncNever {
			_ = q.w.Sync()
		}
		q.w.Close()
	}
	q.wseg++
	q.wsize = 0
	w, err := os.OpenFile(filepath.Join(q.dir, segName(q.wseg)), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		q.w = nil
		return fmt.Errorf("spool: new segment: %w", err)
	}
	q.w = w
	return nil
}

// Peek returns the oldest waiting event, dropping (and counting) those
// older than max_age and those whose record cannot be read.
func (q *RouteSpool) Peek() (*Event, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.head < len(q.pending) {
		s := q.pending[q.head]
		if s.done {
			q.popLocked()
			continue
		}
		if s.recv.IsZero() || time.Since(s.recv) > time.Duration(q.cfg.MaxAge) {
			if s.recv.IsZero() {
				q.droppedCorrupt.Inc()
			} else {
				q.droppedAge.Inc()
				q.log.Warn("spooled event older than max_age dropped", "age", time.Since(s.recv).Round(time.Second))
			}
			q.popLocked()
			continue
		}
		ev, err := q.readLocked(s)
		if err != nil {
			q.droppedCorrupt.Inc()
			q.log.Error("spool: record unreadable, skipped", "segment", segName(s.seg), "error", err)
			q.popLocked()
			continue
		}
		return ev, true
	}
	return nil, false
}

// readLocked reads the record that ends at s.end in segment s.seg.
func (q *RouteSpool) readLocked(s spooled) (*Event, error) {
	if q.rd == nil || q.rd.seg != s.seg {
		if q.rd != nil {
			q.rd.f.Close()
		}
		f, err := os.Open(filepath.Join(q.dir, segName(s.seg)))
		if err != nil {
			q.rd = nil
			return nil, err
		}
		q.rd = &segReader{seg: s.seg, f: f}
	}
	buf := make([]byte, s.size)
	if _, err := q.rd.f.ReadAt(buf, s.end-s.size); err != nil {
		return nil, err
	}
	p, _, err := readRecord(buf)
	if err != nil {
		return nil, err
	}
	return decodeEvent(p)
}

type segReader struct {
	seg uint64
	f   *os.File
}

// Pop marks the oldest waiting event as delivered.
func (q *RouteSpool) Pop() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head < len(q.pending) {
		if q.pending[q.head].maybeDup {
			q.duplicates.Inc()
		}
		q.popLocked()
		q.replayedC.Inc()
	}
}

func (q *RouteSpool) popLocked() {
	s := q.pending[q.head]
	if s.done {
		q.ndone--
	}
	q.head++
	q.headSeq++
	q.total -= s.size
	old := q.cursor.seg
	q.cursor = s
	q.curDirty = true
	if s.seg != old || q.head == len(q.pending) {
		q.saveCursorLocked()
		q.removeOldLocked()
	}
	if q.head == len(q.pending) || q.head > 4096 && q.head > len(q.pending)/2 {
		q.pending = append(q.pending[:0], q.pending[q.head:]...)
		q.head = 0
	}
	q.gauges()
}

// saveCursorLocked writes the cursor atomically (temp file + rename).
func (q *RouteSpool) saveCursorLocked() {
	if !q.curDirty {
		return
	}
	tmp := filepath.Join(q.dir, "cursor.tmp")
	data := fmt.Sprintf("%d %d\n", q.cursor.seg, q.cursor.end)
	if err := os.WriteFile(tmp, []byte(data), 0o640); err == nil {
		if q.cfg.Fsync != fsyncNever {
			if f, err := os.Open(tmp); err == nil {
				f.Sync()
				f.Close()
			}
		}
		if err := os.Rename(tmp, filepath.Join(q.dir, "cursor")); err == nil {
			q.curDirty = false
			return
		}
	}
	q.log.Error("spool: cannot save the replay cursor; events may be replayed twice after a restart", "dir", q.dir)
}

// removeOldLocked deletes segments wholly before the cursor.
func (q *RouteSpool) removeOldLocked() {
	segs, _ := q.segments()
	for _, seq := range segs {
		if seq < q.cursor.seg && seq != q.wseg {
			os.Remove(filepath.Join(q.dir, segName(seq)))
			if q.rd != nil && q.rd.seg == seq {
				q.rd.f.Close()
				q.rd = nil
			}
		}
	}
}

func (q *RouteSpool) gauges() {
	n := len(q.pending) - q.head - q.ndone
	q.events.Set(float64(n))
	q.bytes.Set(float64(q.total))
	if n > 0 {
		q.oldest.Set(time.Since(q.pending[q.head].recv).Seconds())
	} else {
		q.oldest.Set(0)
	}
}

// syncLoop is the fsync = interval policy, and saves the cursor on the
// same beat so that a crash replays at most one interval twice.
func (q *RouteSpool) syncLoop() {
	defer close(q.done)
	t := time.NewTicker(time.Duration(q.cfg.FsyncInterval))
	defer t.Stop()
	for {
		select {
		case <-q.stop:
			return
		case <-t.C:
		}
		q.mu.Lock()
		if q.dirty && q.w != nil && q.cfg.Fsync == fsyncInterval {
			if err := q.w.Sync(); err != nil {
				q.log.Error("spool fsync failed", "error", err)
			}
			q.dirty = false
		}
		q.saveCursorLocked()
		if len(q.pending) > q.head {
			q.oldest.Set(time.Since(q.pending[q.head].recv).Seconds())
		}
		q.mu.Unlock()
	}
}

// Close syncs the tail and the cursor.
func (q *RouteSpool) Close() error {
	select {
	case <-q.stop:
		return nil
	default:
		close(q.stop)
	}
	<-q.done
	q.mu.Lock()
	defer q.mu.Unlock()
	q.saveCursorLocked()
	var err error
	if q.w != nil {
		if q.cfg.Fsync != fsyncNever {
			err = q.w.Sync()
		}
		q.w.Close()
		q.w = nil
	}
	if q.rd != nil {
		q.rd.f.Close()
		q.rd = nil
	}
	return err
}
