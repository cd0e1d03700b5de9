package main

import (
	"context"
	"log/slog"
	"reflect"
	"sync"

	"github.com/sipside/sipside/evi"
	"github.com/sipside/sipside/internal/metrics"
)

// subscriptions runs one evi.Subscriber per [[subscribe]] and replaces
// them when a reload changes the section.
type subscriptions struct {
	reg *metrics.Registry
	log *slog.Logger

	mu     sync.Mutex
	cfg    []evi.SubscribeConfig
	subs   []*evi.Subscriber
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newSubscriptions(reg *metrics.Registry, log *slog.Logger) *subscriptions {
	return &subscriptions{reg: reg, log: log}
}

// apply starts the subscribers of cfg; unchanged config keeps them running.
// The old ones unsubscribe before the new ones subscribe, since OpenSIPS
// keys subscriptions by socket and the new set may reuse it.
func (s *subscriptions) apply(ctx context.Context, cfg []evi.SubscribeConfig) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil && reflect.DeepEqual(cfg, s.cfg) {
		return
	}
	if s.cancel != nil {
		s.cancel()
		s.wg.Wait()
	}
	s.cfg, s.subs = cfg, nil
	sctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	for _, sc := range cfg {
		sub, err := evi.NewSubscriber(sc, s.reg, s.log)
		if err != nil { // validated with the config; cannot happen
			s.log.Error("subscription not started", "target", sc.Target, "error", err)
			continue
		}
		s.subs = append(s.subs, sub)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sub.Run(sctx)
		}()
	}
}

// wait returns when every subscriber has unsubscribed (after ctx ended).
func (s *subscriptions) wait() { s.wg.Wait() }

func (s *subscriptions) states() []evi.SubscriptionState {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []evi.SubscriptionState
	for _, sub := range s.subs {
		out = append(out, sub.States()...)
	}
	return out
}
