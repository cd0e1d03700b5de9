package evi

import (
	"log/slog"
	"time"

	"github.com/sipside/sipside/internal/ratelog"
)

// rateLog logs at most once per interval and says how many it held back,
// so that a flood of garbage cannot flood the log too. It is the one
// implementation shared with dmq (internal/ratelog).
type rateLog = ratelog.Logger

func newRateLog(log *slog.Logger, interval time.Duration) *rateLog {
	return ratelog.New(log, interval)
}
