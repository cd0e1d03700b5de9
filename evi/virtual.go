package evi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Policy is how a virtual subscriber picks its members, named as in
// OpenSIPS's event_virtual.
type Policy string

const (
	Parallel   Policy = "PARALLEL"
	Failover   Policy = "FAILOVER"
	RoundRobin Policy = "ROUND-ROBIN"
)

// DefaultFailoverTimeout is event_virtual's default failover_timeout.
const DefaultFailoverTimeout = 30 * time.Second

// Virtual is a virtual subscriber: several backends behind one policy.
//
// Where it differs from event_virtual in OpenSIPS 3.6.8, on purpose:
//   - FAILOVER: when every member is inside its failover window, the module
//     drops the event; Virtual tries the members anyway, in order.
//   - ROUND-ROBIN: the module loses the event when the member whose turn it
//     is fails; Virtual tries the following members before giving up.
//   - PARALLEL: the module stops at the first failure; Virtual delivers to
//     every member and fails only the members that failed.
type Virtual struct {
	policy  Policy
	members []*member
	timeout time.Duration
	next    atomic.Uint64
	// Report, when set, is told the outcome of every member delivery.
	Report func(member string, err error)
	now    func() time.Time
}

type member struct {
	name      string // redacted socket string
	b         Backend
	downUntil atomic.Int64 // unix nanoseconds; FAILOVER skips the member until then
}

// MemberError is the error of a virtual subscriber: which members failed and why.
type MemberError struct {
	Policy Policy
	Errs   []error
}

func (e *MemberError) Error() string {
	parts := make([]string, len(e.Errs))
	for i, err := range e.Errs {
		parts[i] = err.Error()
	}
	return fmt.Sprintf("virtual %s: %s", e.Policy, strings.Join(parts, "; "))
}

func (e *MemberError) Unwrap() []error { return e.Errs }

func newVirtual(spec string, d Deps) (Backend, error) {
	fields := strings.Fields(spec)
	if len(fields) == 0 {
		return nil, errors.New("virtual: no policy: write virtual:PARALLEL|FAILOVER|ROUND-ROBIN SOCKET SOCKET…")
	}
	p := Policy(fields[0])
	switch p {
	case Parallel, Failover, RoundRobin:
	default:
		return nil, fmt.Errorf("virtual: unknown policy %q: want PARALLEL, FAILOVER or ROUND-ROBIN (upper case, as OpenSIPS wants it)", fields[0])
	}
	if len(fields) < 2 {
		return nil, fmt.Errorf("virtual:%s has no member sockets", p)
	}
	v := &Virtual{policy: p, timeout: DefaultFailoverTimeout, now: time.Now}
	for _, s := range fields[1:] {
		if strings.HasPrefix(s, "virtual:") {
			v.Close()
			return nil, fmt.Errorf("virtual:%s: member %q: a virtual subscriber cannot contain another", p, s)
		}
		b, err := NewBackend(s, d)
		if err != nil {
			v.Close()
			return nil, fmt.Errorf("virtual:%s member: %w", p, err)
		}
		v.members = append(v.members, &member{name: Redact(s), b: b})
	}
	return v, nil
}

// SetFailoverTimeout sets how long FAILOVER skips a member after it failed.
func (v *Virtual) SetFailoverTimeout(d time.Duration) { v.timeout = d }

// MemberStatus is one member of a virtual subscriber as the status shows it.
type MemberStatus struct {
	Name string `json:"name"` // redacted socket string
	// SkippedUntil is when FAILOVER tries it first again after it failed;
	// zero when it is not in its failover_timeout window.
	SkippedUntil time.Time `json:"skipped_until,omitzero"`
	// InUse: the member FAILOVER tries first now (the first one not skipped).
	InUse bool `json:"in_use,omitempty"`
}

// Policy is the virtual subscriber's policy.
func (v *Virtual) Policy() Policy { return v.policy }

// Members reports every member in order, with FAILOVER's state.
func (v *Virtual) Members() []MemberStatus {
	now := v.now().UnixNano()
	out := make([]MemberStatus, len(v.members))
	inUse := false
	for i, m := range v.members {
		out[i].Name = m.name
		if until := m.downUntil.Load(); until > now {
			out[i].SkippedUntil = time.Unix(0, until)
		} else if v.policy == Failover && !inUse {
			out[i].InUse, inUse = true, true
		}
	}
	return out
}

func (v *Virtual) report(m *member, err error) {
	if v.Report != nil {
		v.Report(m.name, err)
	}
}

// Deliver delivers ev as the policy says.
func (v *Virtual) Deliver(ctx context.Context, ev *Event) error {
	switch v.policy {
	case Parallel:
		return v.parallel(ctx, ev)
	case Failover:
		return v.failover(ctx, ev)
	default:
		return v.roundRobin(ctx, ev)
	}
}

func (v *Virtual) try(ctx context.Context, m *member, ev *Event) error {
	err := m.b.Deliver(ctx, ev)
	v.report(m, err)
	if err != nil {
		return fmt.Errorf("%s: %w", m.name, err)
	}
	return nil
}

func (v *Virtual) parallel(ctx context.Context, ev *Event) error {
	errs := make([]error, len(v.members))
	var wg sync.WaitGroup
	for i, m := range v.members[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i+1] = v.try(ctx, m, ev)
		}()
	}
	errs[0] = v.try(ctx, v.members[0], ev)
	wg.Wait()
	return v.collect(errs)
}

func (v *Virtual) failover(ctx context.Context, ev *Event) error {
	var errs []error
	var skipped []*member
	now := v.now().UnixNano()
	for _, m := range v.members {
		if m.downUntil.Load() > now {
			skipped = append(skipped, m)
			continue
		}
		err := v.try(ctx, m, ev)
		if err == nil {
			return nil
		}
		m.downUntil.Store(v.now().Add(v.timeout).UnixNano())
		errs = append(errs, err)
	}
	// Every member failed or sits in its window: the module would drop the
	// event here; one more chance for the skipped ones costs little.
	for _, m := range skipped {
		err := v.try(ctx, m, ev)
		if err == nil {
			m.downUntil.Store(0)
			return nil
		}
		m.downUntil.Store(v.now().Add(v.timeout).UnixNano())
		errs = append(errs, err)
	}
	return &MemberError{Policy: v.policy, Errs: errs}
}

func (v *Virtual) roundRobin(ctx context.Context, ev *Event) error {
	n := len(v.members)
	start := int((v.next.Add(1) - 1) % uint64(n))
	var errs []error
	for k := 0; k < n; k++ {
		if err := v.try(ctx, v.members[(start+k)%n], ev); err == nil {
			return nil
		} else {
			errs = append(errs, err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	return &MemberError{Policy: v.policy, Errs: errs}
}

func (v *Virtual) collect(errs []error) error {
	var failed []error
	for _, e := range errs {
		if e != nil {
			failed = append(failed, e)
		}
	}
	if failed == nil {
		return nil
	}
	return &MemberError{Policy: v.policy, Errs: failed}
}

// Flush flushes members that batch writes.
func (v *Virtual) Flush() error {
	var errs []error
	for _, m := range v.members {
		if f, ok := m.b.(flusher); ok {
			errs = append(errs, f.Flush())
		}
	}
	return errors.Join(errs...)
}

// Close closes every member.
func (v *Virtual) Close() error {
	var errs []error
	for _, m := range v.members {
		errs = append(errs, m.b.Close())
	}
	return errors.Join(errs...)
}

// flusher is a backend that batches and wants to be told when to write.
type flusher interface{ Flush() error }
