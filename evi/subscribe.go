package evi

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/mi"
)

// SubscribeConfig is one [[subscribe]]: events sipside asks an OpenSIPS to
// send to one of its inputs with event_subscribe.
type SubscribeConfig struct {
	Target string   `toml:"target"` // an opensips: MI target
	Events []string `toml:"events"` // event names, as events_list shows them
	Socket string   `toml:"socket"` // what OpenSIPS sends to: one of sipside's inputs, written exactly as it listens
	Expire int      `toml:"expire"` // seconds; default 3600, as event_subscribe's
	// Check is how often sipside verifies with subscribers_list that the
	// subscription still exists (a proxy restart forgets every one).
	CheckInterval config.Duration `toml:"check_interval"`
}

const (
	defaultExpire = 3600
	defaultCheck  = time.Second
)

// WithDefaults fills in every unset key.
func (sc SubscribeConfig) WithDefaults() SubscribeConfig {
	if sc.Expire == 0 {
		sc.Expire = defaultExpire
	}
	if sc.CheckInterval == 0 {
		sc.CheckInterval = config.Duration(defaultCheck)
	}
	return sc
}

// Check reports what is wrong with one [[subscribe]] (keys relative to p),
// without calling the proxy.
func (sc SubscribeConfig) Check(p *config.Problems) {
	if t, err := mi.ParseTarget(sc.Target); err != nil {
		p.AddErr("target", err)
	} else if t.Dialect != mi.OpenSIPS {
		p.Add("target", "%q: only OpenSIPS has event_subscribe; for Kamailio add an [[input]] with listen = \"evapi:HOST:PORT\" instead", sc.Target)
	}
	if len(sc.Events) == 0 {
		p.Add("events", `name at least one event, e.g. events = ["E_UL_CONTACT_INSERT"]`)
	}
	for _, e := range sc.Events {
		if e == "" || strings.ContainsAny(e, "*?[ ") {
			p.Add("events", "%q: event_subscribe takes exact event names, not patterns", e)
		}
	}
	if strings.HasPrefix(sc.Socket, "virtual:") {
		// A virtual: subscription with udp/unix members crashes OpenSIPS
		// 3.6.8 when it expires or is unsubscribed; sipside does the
		// virtual dispatch itself.
		p.Add("socket", "%q: subscribe sipside's own udp:, unix: or tcp: input and put the virtual: string in a [[route]] (virtual subscriptions can crash OpenSIPS 3.6.8 when they expire)", sc.Socket)
	} else if l, err := ParseListen(sc.Socket); err != nil {
		p.AddErr("socket", err)
	} else {
		switch l.Proto {
		case "udp", "unix", "tcp":
		default:
			p.Add("socket", "%q: OpenSIPS can send events to udp:, unix: or tcp: sockets only", sc.Socket)
		}
	}
	if sc.Expire < 0 {
		p.Add("expire", "%d: want seconds > 0 (0 means the default, 3600)", sc.Expire)
	}
	if sc.CheckInterval < 0 {
		p.Add("check_interval", "%v: must not be negative", sc.CheckInterval)
	}
}

// Validate is Check as one error.
func (sc SubscribeConfig) Validate() error {
	var p config.Problems
	sc.Check(&p)
	return p.Err()
}

// SubscriptionState is what `sipside events status` and /metrics show.
type SubscriptionState struct {
	Target    string    `json:"target"`
	Event     string    `json:"event"`
	Socket    string    `json:"socket"`
	State     string    `json:"state"` // pending, active, down
	Expires   time.Time `json:"expires,omitzero"`
	LastError string    `json:"last_error,omitempty"`
	Renewed   int       `json:"subscribed"` // successful event_subscribe calls
}

// Subscriber keeps one [[subscribe]] alive: it subscribes at start,
// refreshes at two thirds of expire, checks every check_interval that the
// proxy still has the subscription (a restart forgets it) and subscribes
// again at once when it does not, and unsubscribes on shutdown.
type Subscriber struct {
	cfg    SubscribeConfig
	client *mi.Client
	log    *slog.Logger
	now    func() time.Time

	up    *metrics.GaugeVec
	exp   *metrics.GaugeVec
	resub *metrics.CounterVec

	mu     sync.Mutex
	states map[string]*SubscriptionState
}

// NewSubscriber builds a subscriber; it calls nothing until Run.
func NewSubscriber(cfg SubscribeConfig, reg *metrics.Registry, log *slog.Logger) (*Subscriber, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	reg = metrics.OrNew(reg)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := mi.New(cfg.Target, mi.Options{Metrics: reg, Logger: log, Timeout: 2 * time.Second})
	if err != nil {
		return nil, err
	}
	s := &Subscriber{cfg: cfg, client: c, log: log.With("target", cfg.Target, "socket", cfg.Socket), now: time.Now,
		up:     reg.Gauge("sipside_subscription_up", "1 while the proxy holds sipside's event subscription.", "target", "event", "socket"),
		exp:    reg.Gauge("sipside_subscription_expiry_timestamp_seconds", "When the subscription expires unless refreshed (unix time).", "target", "event", "socket"),
		resub:  reg.Counter("sipside_subscriptions_total", "event_subscribe calls by reason (start, refresh, lost) and outcome.", "target", "reason", "outcome"),
		states: map[string]*SubscriptionState{}}
	for _, e := range cfg.Events {
		s.states[e] = &SubscriptionState{Target: cfg.Target, Event: e, Socket: cfg.Socket, State: "pending"}
		// A series from the start: a proxy that never answers must show 0,
		// not nothing, or no alert can fire on it.
		s.up.With(cfg.Target, e, cfg.Socket).Set(0)
	}
	return s, nil
}

// States returns a copy of every event's state, sorted by event.
func (s *Subscriber) States() []SubscriptionState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SubscriptionState, 0, len(s.states))
	for _, st := range s.states {
		out = append(out, *st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Event < out[j].Event })
	return out
}

// Run keeps the subscriptions until ctx ends, then unsubscribes.
func (s *Subscriber) Run(ctx context.Context) error {
	defer s.client.Close()
	defer s.unsubscribe()
	expire := time.Duration(s.cfg.Expire) * time.Second
	refresh := expire * 2 / 3
	check := time.Duration(s.cfg.CheckInterval)
	next := map[string]time.Time{} // event -> when to (re)subscribe; zero = now
	reason := map[string]string{}
	for _, e := range s.cfg.Events {
		reason[e] = "start"
	}
	t := time.NewTicker(check)
	defer t.Stop()
	for {
		now := s.now()
		for _, e := range s.cfg.Events {
			if now.Before(next[e]) {
				continue
			}
			if err := s.subscribe(ctx, e, reason[e]); err != nil {
				next[e] = now.Add(check) // retry at the next tick
				continue
			}
			next[e] = now.Add(refresh)
			reason[e] = "refresh"
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		// Does the proxy still hold every active subscription?
		for _, e := range s.cfg.Events {
			if s.state(e) != "active" {
				continue
			}
			if lost, why := s.lost(ctx, e); lost {
				s.log.Warn("subscription lost; subscribing again", "event", e, "why", why)
				s.set(e, "down", time.Time{}, why)
				next[e] = time.Time{}
				reason[e] = "lost"
			}
		}
	}
}

func (s *Subscriber) subscribe(ctx context.Context, event, reason string) error {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := s.client.Call(cctx, "event_subscribe", mi.Named{
		{Name: "event", Value: event}, {Name: "socket", Value: s.cfg.Socket}, {Name: "expire", Value: s.cfg.Expire}})
	if err != nil {
		s.resub.With(s.cfg.Target, reason, "error").Inc()
		var me *mi.Error
		if errors.As(err, &me) {
			s.log.Error("event_subscribe refused: check the event name (events_list) and the socket", "event", event, "error", err)
		} else if s.state(event) != "down" {
			s.log.Warn("event_subscribe failed: proxy unreachable; retrying", "event", event, "error", err)
		}
		s.set(event, "down", time.Time{}, err.Error())
		return err
	}
	s.resub.With(s.cfg.Target, reason, "ok").Inc()
	exp := s.now().Add(time.Duration(s.cfg.Expire) * time.Second)
	s.mu.Lock()
	s.states[event].Renewed++
	s.mu.Unlock()
	if reason != "refresh" {
		s.log.Info("subscribed", "event", event, "expire", s.cfg.Expire, "reason", reason)
	}
	s.set(event, "active", exp, "")
	return nil
}

// lost asks subscribers_list whether the proxy still has the subscription.
// Only a definite answer counts: an unreachable proxy is "down" (and
// refreshed when it answers), a 404 means a restart or expiry forgot us.
func (s *Subscriber) lost(ctx context.Context, event string) (bool, string) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := s.client.Call(cctx, "subscribers_list", []string{event, s.cfg.Socket})
	if err == nil {
		return false, ""
	}
	if ctx.Err() != nil {
		return false, ""
	}
	var me *mi.Error
	if errors.As(err, &me) && me.Code == 404 {
		return true, "the proxy no longer has it (" + me.Message + "): restarted, or it expired"
	}
	if !errors.As(err, &me) {
		return true, "proxy unreachable: " + err.Error()
	}
	return false, ""
}

func (s *Subscriber) unsubscribe() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, e := range s.cfg.Events {
		if s.state(e) != "active" {
			continue
		}
		_, err := s.client.Call(ctx, "event_subscribe", mi.Named{
			{Name: "event", Value: e}, {Name: "socket", Value: s.cfg.Socket}, {Name: "expire", Value: 0}})
		if err != nil {
			s.log.Warn("unsubscribe failed; the proxy drops it at expiry", "event", e, "error", err)
			continue
		}
		s.set(e, "pending", time.Time{}, "")
		s.log.Info("unsubscribed", "event", e)
	}
}

func (s *Subscriber) state(event string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.states[event].State
}

func (s *Subscriber) set(event, state string, exp time.Time, lastErr string) {
	s.mu.Lock()
	st := s.states[event]
	st.State, st.Expires = state, exp
	if lastErr != "" || state == "active" {
		st.LastError = lastErr
	}
	s.mu.Unlock()
	up := 0.0
	if state == "active" {
		up = 1
	}
	s.up.With(s.cfg.Target, event, s.cfg.Socket).Set(up)
	if !exp.IsZero() {
		s.exp.With(s.cfg.Target, event, s.cfg.Socket).Set(float64(exp.Unix()))
	}
}
