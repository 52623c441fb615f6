package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Result is what a scenario measured. Pointer fields are nil when the
// scenario does not measure them (or could not), so JSON omits them.
type Result struct {
	Scenario string `json:"scenario"`
	URL      string `json:"url"`
	Conns    int    `json:"conns"`

	Connected      int            `json:"connected"`
	ConnectFailed  int            `json:"connect_failed"`
	ConnectErrors  map[string]int `json:"connect_errors,omitempty"`
	ConnectFirst   string         `json:"connect_first_error,omitempty"`
	ConnectSeconds float64        `json:"connect_seconds"`
	ConnectsPerSec float64        `json:"connects_per_sec"`
	Unconfirmed    int            `json:"joins_unconfirmed"`

	Senders          int      `json:"senders,omitempty"`
	Sent             uint64   `json:"sent"`
	SendErrors       uint64   `json:"send_errors"`
	Receivers        int      `json:"receivers"`
	Deliveries       uint64   `json:"deliveries"`
	Expected         uint64   `json:"deliveries_expected"`
	Lost             int64    `json:"lost"`
	OutOfOrder       uint64   `json:"out_of_order"`
	ServerErrors     uint64   `json:"server_errors"`
	Unparsed         uint64   `json:"unparsed_frames"`
	DurationSeconds  float64  `json:"duration_seconds"`
	DeliveriesPerSec float64  `json:"deliveries_per_sec"`
	Latency          *Latency `json:"latency_ms,omitempty"`

	Disconnected    int            `json:"disconnected"`
	DisconnectCodes map[string]int `json:"disconnect_codes"`
	DisconnectWhy   map[string]int `json:"disconnect_errors,omitempty"`

	Server          ServerStats `json:"server"`
	RSSBeforeBytes  *uint64     `json:"rss_before_bytes,omitempty"`
	RSSPerConnBytes *float64    `json:"rss_per_conn_bytes,omitempty"`
	CPUUsPerDeliver *float64    `json:"cpu_us_per_delivery,omitempty"`

	// storm
	DrainSeconds    *float64 `json:"drain_seconds,omitempty"`
	NoticesReceived *uint64  `json:"notices_received,omitempty"`
	NoticesExpected *uint64  `json:"notices_expected,omitempty"`
	NoticesMissing  *uint64  `json:"notices_missing,omitempty"`
	NoticesDup      *uint64  `json:"notices_duplicated,omitempty"`

	// rooms, and idle with -rooms (rooms.go)
	Rooms *RoomsStats `json:"rooms,omitempty"`

	// slow
	SlowClients      *int           `json:"slow_clients,omitempty"`
	SlowDisconnected *int           `json:"slow_disconnected,omitempty"`
	SlowCodes        map[string]int `json:"slow_disconnect_codes,omitempty"`
	SlowWhy          map[string]int `json:"slow_disconnect_errors,omitempty"`
	// SlowBacklog is how many measured messages the slow clients still
	// found queued for them when they finally read (before the close).
	SlowBacklog *uint64 `json:"slow_backlog_delivered,omitempty"`

	// soak
	Baseline            *ServerStats   `json:"baseline,omitempty"`
	Peak                *ServerStats   `json:"peak,omitempty"`
	After               *ServerStats   `json:"after,omitempty"`
	Samples             []SoakSample   `json:"samples,omitempty"`
	Churned             *int           `json:"churned,omitempty"`
	ChurnCloseCodes     map[string]int `json:"churn_close_codes,omitempty"`
	ChurnSkipped        *uint64        `json:"churn_skipped,omitempty"`
	SlowEvicted         *int           `json:"slow_evicted,omitempty"`
	ServerSlowConsumers *int           `json:"server_slow_consumer_disconnects,omitempty"`
	HealthyDisconnected *int           `json:"healthy_disconnected,omitempty"`
	ReplaceFailed       *int           `json:"replace_failed,omitempty"`
	ReplaceErrors       map[string]int `json:"replace_errors,omitempty"`
	SettleSeconds       *float64       `json:"settle_seconds,omitempty"`
	ConnectionsAfter    *int           `json:"server_connections_after,omitempty"`

	// several servers (-url repeated) or one shard of several processes
	// (-shard): each server's figures; the fields above are the totals and
	// Server the sum over the servers.
	Nodes    []NodeResult `json:"nodes,omitempty"`
	Shard    *ShardInfo   `json:"shard,omitempty"`
	Merged   int          `json:"merged_shards,omitempty"` // bench merge: how many shards
	Rejoined *int         `json:"rejoined,omitempty"`      // -rejoin: disconnected clients back (not receivers)
	Tracking *TrackStats  `json:"tracking,omitempty"`      // -track
}

// NodeResult is what the clients of one server saw, and that server.
type NodeResult struct {
	URL           string `json:"url"`
	Clients       int    `json:"clients"`
	Connected     int    `json:"connected"`
	ConnectFailed int    `json:"connect_failed"`
	Senders       int    `json:"senders"`
	Receivers     int    `json:"receivers"`
	Deliveries    uint64 `json:"deliveries"`
	Expected      uint64 `json:"deliveries_expected"`
	Lost          int64  `json:"lost"`
	OutOfOrder    uint64 `json:"out_of_order"`
	Disconnected  int    `json:"disconnected"`
	// -rejoin: disconnected clients that joined again, and the measured
	// messages they got after that (they are not receivers).
	Rejoined           int      `json:"rejoined,omitempty"`
	RejoinedDeliveries uint64   `json:"rejoined_deliveries,omitempty"`
	Latency            *Latency `json:"latency_ms,omitempty"`
	// LatencyHist is the HDR histogram behind Latency (µs, base64 of its
	// compressed V2 encoding), written by shards so that merge adds
	// histograms instead of averaging percentiles.
	LatencyHist string `json:"latency_hist,omitempty"`

	Server          ServerStats `json:"server"`
	RSSBeforeBytes  *uint64     `json:"rss_before_bytes,omitempty"`
	RSSPerConnBytes *float64    `json:"rss_per_conn_bytes,omitempty"`
	CPUUsPerDeliver *float64    `json:"cpu_us_per_delivery,omitempty"`
	// Restarts is how many times the process behind the URL changed (was
	// killed and started again) in the window; CPU and counters are summed
	// over its lives.
	Restarts int `json:"server_restarts,omitempty"`
	// Counters are the increases of the server's gochat_cluster_*_total
	// counters over the window.
	Counters map[string]float64 `json:"cluster_counters,omitempty"`

	// -track: measured messages that every receiver of this server missed
	// (a relay's loss), that some but not all missed (a client's), and,
	// in a shard's JSON, per message ("sender:seq") how many receivers
	// missed it.
	MissedWhole  *int           `json:"messages_missed_by_node,omitempty"`
	MissedPartly *int           `json:"messages_missed_partly,omitempty"`
	Missing      map[string]int `json:"missing,omitempty"`
}

// ShardInfo says which part of a sharded run a result is.
type ShardInfo struct {
	Index int    `json:"index"`
	Of    int    `json:"of"`
	RunID string `json:"run_id"`
	// Sent is what this shard's senders sent; the result's sent is the
	// total of every shard, which its receivers were owed.
	Sent uint64 `json:"sent_here"`
}

// TrackStats judges silent loss (-track). A relay that loses a message
// loses it for every client of a server; the server should count it.
type TrackStats struct {
	Messages int `json:"messages"` // measured messages the senders attempted
	// MissedByNode sums, over the servers, the messages every one of their
	// receivers missed; LostWithNode is those as deliveries.
	MissedByNode int    `json:"messages_missed_by_a_node"`
	LostWithNode uint64 `json:"deliveries_lost_with_a_node"`
	// LostAlone is the rest of the loss: deliveries one client missed
	// while others on its server got them.
	LostAlone int64 `json:"deliveries_lost_alone"`
	// Counted is, over the servers, the messages the cluster counters say
	// were not relayed to it: its own receive-side loss counters plus the
	// publish-side ones of every other server.
	Counted float64 `json:"server_counted"`
	// Silent is, over the servers, the messages missed by a whole server
	// beyond what was counted for it.
	Silent float64 `json:"silent"`
}

// ServerStats are the server's figures at the end of the measured window;
// CPUSeconds is the delta over that window.
type ServerStats struct {
	RSSBytes   *uint64  `json:"rss_bytes,omitempty"`
	CPUSeconds *float64 `json:"cpu_seconds,omitempty"`
	FDs        *int     `json:"fds,omitempty"`
	Goroutines *int     `json:"goroutines,omitempty"`
}

// Latency holds end-to-end latency percentiles in milliseconds.
type Latency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// serverWindow fills r.Server from samples taken at the start and the end
// of the measured window.
func (r *Result) serverWindow(before, after serverSample) {
	r.Server = ServerStats{RSSBytes: after.RSS, FDs: after.FDs, Goroutines: after.Goroutines}
	if before.CPU != nil && after.CPU != nil {
		r.Server.CPUSeconds = ptr(*after.CPU - *before.CPU)
	}
}

// fillConnect copies the ramp-up figures of f into r.
func (r *Result) fillConnect(f *fleet) {
	r.Conns = f.n
	r.URL = f.cfg.URL
	if urls := urlsOf(f.cfg); len(urls) > 1 {
		r.URL = strings.Join(urls, ",")
	}
	r.Connected = int(f.connected.Load())
	r.ConnectFailed = int(f.failed.Load())
	if len(f.dialErrs) > 0 {
		r.ConnectErrors = maps.Clone(f.dialErrs)
	}
	r.ConnectFirst = f.firstErr
	r.ConnectSeconds = f.connectEnd.Sub(f.connectStart).Seconds()
	if r.ConnectSeconds > 0 {
		r.ConnectsPerSec = float64(r.Connected) / r.ConnectSeconds
	}
}

// connectErr is nil when every client connected; otherwise it says how
// many could not, the first error and the count of each error, because a
// run short of clients did not measure what it reports.
func (r *Result) connectErr() error {
	if r.ConnectFailed == 0 {
		return nil
	}
	msg := fmt.Sprintf("%d of %d clients could not connect", r.ConnectFailed, r.Conns)
	if r.ConnectFirst != "" {
		msg += ": first error: " + r.ConnectFirst
	}
	if len(r.ConnectErrors) > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(r.ConnectErrors)) {
			parts = append(parts, fmt.Sprintf("%d× %s", r.ConnectErrors[k], k))
		}
		msg += " (" + strings.Join(parts, "; ") + ")"
	}
	return errors.New(msg)
}

// mergeLatency merges the per-connection histograms of clients (read after
// the readers exited).
func mergeLatency(clients []*client) *Latency { return latencyOf(mergeHist(clients)) }

// mergeHist adds up the latencies of clients (their histograms and what
// they have not added to them yet); nil if none has any. It leaves the
// clients as they are: a client may be counted in several groups.
func mergeHist(clients []*client) *hdrhistogram.Histogram {
	var all *hdrhistogram.Histogram
	for _, c := range clients {
		if c.hist == nil && len(c.lats) == 0 {
			continue
		}
		if all == nil {
			all = hdrhistogram.New(1, histMax, histSigFigs)
		}
		if c.hist != nil {
			all.Merge(c.hist)
		}
		recordAll(all, c.lats)
	}
	return all
}

// latencyOf is the percentiles of a histogram in µs, in milliseconds.
func latencyOf(all *hdrhistogram.Histogram) *Latency {
	if all == nil || all.TotalCount() == 0 {
		return nil
	}
	ms := func(us int64) float64 { return float64(us) / 1e3 }
	return &Latency{
		Count: all.TotalCount(),
		P50:   ms(all.ValueAtQuantile(50)),
		P90:   ms(all.ValueAtQuantile(90)),
		P99:   ms(all.ValueAtQuantile(99)),
		Max:   ms(all.Max()),
	}
}

// encodeHist is h in HDR's compressed V2 form, base64 (for the JSON).
func encodeHist(h *hdrhistogram.Histogram) string {
	b, err := h.Encode(hdrhistogram.V2CompressedEncodingCookieBase)
	if err != nil {
		return ""
	}
	return string(b)
}

// decodeHist reverses encodeHist.
func decodeHist(s string) (*hdrhistogram.Histogram, error) {
	return hdrhistogram.Decode([]byte(s))
}

// sortedKeys returns m's keys in order, for stable output.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
