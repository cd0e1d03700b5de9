package dmq

import "github.com/sipside/sipside/internal/metrics"

type nodeMetrics struct {
	messages        *metrics.CounterVec // direction, channel, kind
	retransmissions *metrics.CounterVec // channel
	timeouts        *metrics.CounterVec // channel
	rejects         *metrics.CounterVec // reason
	nodes           *metrics.GaugeVec   // status
	cells           *metrics.GaugeVec   // (none)
	contacts        *metrics.GaugeVec
	dialogs         *metrics.GaugeVec
	logSuppressed   *metrics.CounterVec
}

func newNodeMetrics(r *metrics.Registry) *nodeMetrics {
	r = metrics.OrNew(r)
	return &nodeMetrics{
		messages: r.Counter("sipside_dmq_messages_total",
			"KDMQ messages sent and received, by direction (in, out), channel and kind (request, response).",
			"direction", "channel", "kind"),
		retransmissions: r.Counter("sipside_dmq_retransmissions_total",
			"KDMQ requests sent again because no answer came within the SIP timers.", "channel"),
		timeouts: r.Counter("sipside_dmq_timeouts_total",
			"KDMQ client transactions that got no final answer (408).", "channel"),
		rejects: r.Counter("sipside_dmq_rejects_total",
			"Received KDMQ traffic refused or dropped, by reason.", "reason"),
		nodes: r.Gauge("sipside_dmq_nodes",
			"Nodes in the DMQ node list by status (self included).", "status"),
		cells:    r.Gauge("sipside_dmq_htable_cells", "Cells in the htable mirror."),
		contacts: r.Gauge("sipside_dmq_usrloc_contacts", "Contacts in the usrloc view."),
		dialogs:  r.Gauge("sipside_dmq_dialogs", "Dialogs in the dialog view."),
		logSuppressed: r.Counter("sipside_dmq_log_suppressed_total",
			"Refusal log lines held back by the once-a-second-per-reason-and-source limit."),
	}
}
