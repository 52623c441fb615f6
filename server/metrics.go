package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"gochat/server/internal/chat"
	"gochat/server/internal/wsframe"
)

// metrics are the Prometheus series of one Server, on its own registry so
// several servers (tests) never collide. Every series gochat exports is
// defined here (the relay adds its own, natsrelay), the chat layer's
// included: they are handed to it as chat.Metrics. Counters on per-message
// paths are added once per batch, not once per delivery. No label value
// ever comes from a client.
type metrics struct {
	reg  *prometheus.Registry
	chat chat.Metrics

	accepted         prometheus.Counter
	acceptErrors     prometheus.Counter
	upgrades         prometheus.Counter
	handshakeRejects prometheus.Counter
	originRejects    prometheus.Counter
	shed             prometheus.Counter
	bytesOut         prometheus.Counter
	slowConsumers    prometheus.Counter
	panics           prometheus.Counter
	inboundParks     prometheus.Counter
	fullHealthz      prometheus.Counter
	idleCollections  prometheus.Counter
	disconnects      *prometheus.CounterVec
	timeouts         *prometheus.CounterVec
}

func newMetrics(s *Server) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "gochat", Name: name, Help: help})
		m.reg.MustRegister(c)
		return c
	}
	gauge := func(name, help string, f func() float64) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "gochat", Name: name, Help: help}, f))
	}
	m.accepted = counter("accepted_total", "TCP connections accepted.")
	m.acceptErrors = counter("accept_errors_total", "accept(2) failures, including running out of file descriptors.")
	m.upgrades = counter("upgrades_total", "Successful WebSocket upgrades.")
	m.handshakeRejects = counter("handshake_rejects_total", "Upgrade requests refused as malformed or oversized.")
	m.originRejects = counter("origin_rejects_total", "Upgrade requests refused for a cross-site Origin (403).")
	m.shed = counter("shed_total", "Upgrades refused with 503: draining, max-conns or pool overload.")
	m.chat.Joins = counter("joins_total", "Clients that joined the chat.")
	m.chat.JoinRejects = counter("join_rejects_total", "Join messages refused (bad, reserved or taken username).")
	m.chat.Leaves = counter("leaves_total", "Joined clients that left.")
	m.chat.MessagesIn = counter("messages_received_total", "Text messages received from clients.")
	m.chat.Published = counter("broadcasts_total", "Messages and notices accepted for broadcast.")
	m.chat.Deliveries = counter("deliveries_total", "Broadcast messages handed to recipients (one per recipient).")
	m.bytesOut = counter("sent_bytes_total", "Bytes written to WebSocket clients.")
	m.chat.BytesOut = m.bytesOut
	m.chat.Rounds = counter("broadcast_rounds_total", "Fan-out rounds; each carries every message queued since the last.")
	m.slowConsumers = counter("slow_consumer_disconnects_total", "Clients closed 1008 because their pending output passed -send-queue.")
	m.chat.RateLimited = counter("rate_limited_total", "Messages refused by the per-client rate limit.")
	m.chat.ErrorBudget = counter("error_budget_disconnects_total", "Clients closed 1008 for exhausting the error budget.")
	m.chat.Replayed = counter("replayed_total", "Messages replayed to joining clients (?history=N, ?since=ID).")
	m.chat.Gaps = counter("resume_gaps_total", "Resumes (?since=ID) that history no longer reached back to; the client was told.")
	m.chat.BusyRejects = counter("busy_rejects_total", "Messages refused because the broadcast queue was full.")
	m.idleCollections = counter("idle_collections_total", "Times the server gave freed memory back to the OS after going quiet (no new connection, no broadcast) for 2 s.")
	m.fullHealthz = counter("full_healthz_total", "/healthz requests answered 200 on the reserve fd while the process was out of fds.")
	m.inboundParks = counter("inbound_parks_total", "Times a client with partial input was not read because inbound memory was over -max-inbound.")
	m.panics = counter("handler_panics_total", "Panics in message handling (connection closed 1011).")
	m.disconnects = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "gochat", Name: "disconnects_total",
		Help: "Connections closed, by WebSocket close code sent (1006: dropped without a close frame)."}, []string{"code"})
	m.timeouts = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "gochat", Name: "timeouts_total",
		Help: "Connections dropped by a deadline, by kind (handshake, join, pong, write: output pending and untouched for -write-timeout, assembly: a message held past -max-inbound not finished in -handshake-timeout)."}, []string{"kind"})
	m.chat.BroadcastLatency = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "gochat", Name: "broadcast_latency_seconds",
		Help:    "Time from a message's publication to the end of its fan-out to every member.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12)})
	m.reg.MustRegister(m.disconnects, m.timeouts, m.chat.BroadcastLatency)
	// Start the common series at zero so dashboards see them before the first event.
	for _, code := range []string{"1000", "1001", "1002", "1003", "1006", "1007", "1008", "1009", "1011", "other"} {
		m.disconnects.WithLabelValues(code)
	}
	for _, kind := range []string{"handshake", "join", "pong", "write", "assembly"} {
		m.timeouts.WithLabelValues(kind)
	}
	gauge("connections", "Open connections owned by the reactor (handshaking, joining, joined, closing).",
		func() float64 { return float64(s.nconns.Load()) })
	gauge("members", "Clients joined to a room, all rooms.", func() float64 { return float64(s.hub.Members()) })
	gauge("rooms", "Rooms that exist (rooms with clients in them).", func() float64 { return float64(s.hub.RoomCount()) })
	gauge("history_messages", "Messages kept for replay, all rooms.", func() float64 { return float64(s.hub.HistorySize()) })
	gauge("outbound_pending_bytes", "Bytes written by the server that clients have not taken yet (bounded by -max-outbound).",
		func() float64 { return float64(s.outbound.Load()) })
	gauge("inbound_buffered_bytes", "Bytes buffered for clients' incomplete frames and messages (bounded by -max-inbound).",
		func() float64 { return float64(s.inbound.Load()) })
	gauge("pool_size", "Worker pool capacity.", func() float64 { return float64(s.pool.Size()) })
	gauge("pool_running", "Workers running tasks now.", func() float64 { return float64(s.pool.Stats().Running) })
	gauge("pool_waiting", "Tasks queued behind busy workers now.", func() float64 { return float64(s.pool.Stats().Waiting) })
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "gochat", Name: "pool_overload_total",
		Help: "Tasks that found every worker busy and waited in the queue."}, func() float64 { return float64(s.pool.Stats().Queued) }))
	gauge("draining", "1 while shutting down.", func() float64 {
		if s.draining.Load() {
			return 1
		}
		return 0
	})
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// closed counts a close by its cause's label (the code sent, or "other"
// for the application codes a client chose).
func (m *metrics) closed(cause *wsframe.CloseCause) {
	m.disconnects.WithLabelValues(cause.Label).Inc()
}
