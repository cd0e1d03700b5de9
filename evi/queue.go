package evi

// eventRing is a FIFO of events that grows as events arrive, up to the
// route's queue limit, instead of allocating the whole limit up front (a
// channel of capacity N allocates N slots at once: queue = 200000000 cost
// 1.58 GB before the first event). Its owner guards it with a mutex.
type eventRing struct {
	buf  []*Event
	head int
	n    int
}

// minRing is the first allocation; the ring doubles from there.
const minRing = 64

func (q *eventRing) len() int { return q.n }

func (q *eventRing) push(ev *Event) {
	if q.n == len(q.buf) {
		q.grow()
	}
	q.buf[(q.head+q.n)%len(q.buf)] = ev
	q.n++
}

func (q *eventRing) grow() {
	nb := make([]*Event, max(minRing, 2*len(q.buf)))
	for i := 0; i < q.n; i++ {
		nb[i] = q.buf[(q.head+i)%len(q.buf)]
	}
	q.buf, q.head = nb, 0
}

func (q *eventRing) peek() *Event { return q.buf[q.head] }

func (q *eventRing) pop() *Event {
	ev := q.buf[q.head]
	q.buf[q.head] = nil
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	if q.n == 0 {
		q.head = 0
		q.shrink()
	}
	return ev
}

// takeAll empties the ring into a new slice, oldest first.
func (q *eventRing) takeAll() []*Event {
	out := make([]*Event, q.n)
	for i := range out {
		out[i] = q.buf[(q.head+i)%len(q.buf)]
		q.buf[(q.head+i)%len(q.buf)] = nil
	}
	q.head, q.n = 0, 0
	q.shrink()
	return out
}

// shrink gives back a ring that a burst grew large, once it is empty, so
// that one burst does not hold its memory for the life of the process.
func (q *eventRing) shrink() {
	if len(q.buf) > 4096 {
		q.buf = nil
	}
}
