package evi

import "github.com/sipside/sipside/internal/metrics"

// Metrics are the event pipeline's counters, registered once per registry
// and shared by every pipeline built on it (a config reload keeps counting).
type Metrics struct {
	Received    *metrics.CounterVec // input
	Invalid     *metrics.CounterVec // input
	Unmatched   *metrics.Counter
	Delivered   *metrics.CounterVec   // route, backend
	Failed      *metrics.CounterVec   // route, backend
	Undelivered *metrics.CounterVec   // route, reason: an event no backend of the route took
	Latency     *metrics.HistogramVec // route
	QueueDepth  *metrics.GaugeVec     // route
	QueueLimit  *metrics.GaugeVec     // route
	ConnsClosed *metrics.CounterVec   // input, reason: stream connections refused or closed by a limit
	AcceptErrs  *metrics.CounterVec   // input: accept errors a stream input backed off from
}

// NewMetrics registers the pipeline's metrics on r.
func NewMetrics(r *metrics.Registry) *Metrics {
	return &Metrics{
		Received:    r.Counter("sipside_events_received_total", "Events read and parsed by an input.", "input"),
		Invalid:     r.Counter("sipside_events_invalid_total", "Datagrams or frames an input rejected as malformed.", "input"),
		Unmatched:   r.Counter("sipside_events_unmatched_total", "Events that matched no route.").With(),
		Delivered:   r.Counter("sipside_events_delivered_total", "Events a backend accepted.", "route", "backend"),
		Failed:      r.Counter("sipside_events_failed_total", "Delivery attempts a backend failed.", "route", "backend"),
		Undelivered: r.Counter("sipside_events_undelivered_total", "Events lost: no backend of the route took them and they were not kept (no spool, the spool refused them, queue full, shutdown). Spooled events are not counted here.", "route", "reason"),
		Latency:     r.Histogram("sipside_delivery_seconds", "Time from receipt to the route's final outcome.", nil, "route"),
		QueueDepth:  r.Gauge("sipside_route_queue_events", "Events waiting in a route's queue.", "route"),
		QueueLimit:  r.Gauge("sipside_route_queue_limit_events", "The route's queue setting: events it may hold before it refuses more.", "route"),
		ConnsClosed: r.Counter("sipside_input_connections_closed_total",
			"Stream input connections refused (max_conns) or closed (idle_timeout) by a limit.", "input", "reason"),
		AcceptErrs: r.Counter("sipside_input_accept_errors_total",
			"Failed accepts of a stream input (EMFILE, ENFILE, …); it backs off and retries.", "input"),
	}
}
