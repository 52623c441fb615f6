package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Several servers. broadcast and idle accept several -url: client i dials
// URL i mod N (a sender i mod -sender-nodes), every client still counts
// every message of the run, whichever server its sender is on, so a
// cluster's cross-node delivery shows as loss and latency like a single
// server's. Latency is measured from the send timestamp in the content,
// on one clock: the fleet's monotonic clock, shifted by clockOffset when
// several bench processes (shards) share a run.
//
// Each server is watched on its own (nodeWatch): its /metrics and the
// process listening on its port, looked for again when that process is
// gone, so a node killed and restarted during the run is followed into its
// new life and its CPU and counters are summed over both.

const defaultURL = "ws://127.0.0.1:8080/ws"

// urlList is the -url flag: repeatable, each value possibly a
// comma-separated list.
type urlList []string

func (l *urlList) String() string { return strings.Join(*l, ",") }

func (l *urlList) Set(v string) error {
	for u := range strings.SplitSeq(v, ",") {
		if u = strings.TrimSpace(u); u != "" {
			*l = append(*l, u)
		}
	}
	return nil
}

// nodeTarget is one server of the run.
type nodeTarget struct {
	URL        string
	MetricsURL string // "" = not sampled through /metrics
	PID        int    // 0 = unknown
	autoPID    bool   // PID was found by port: look again when it is gone
}

// multiFlags are broadcast's flags for several servers and processes.
func multiFlags(fs *flag.FlagSet, c *Config) {
	fs.Func("shard", "i/k: this process opens only its share of -conns, clients [i*conns/k, (i+1)*conns/k), so that k processes (each under the open-file limit) hold one run; needs -sync; combine their -json with 'bench merge'", func(v string) error {
		i, k, err := parseShard(v)
		c.Shard, c.Shards = i, k
		return err
	})
	fs.StringVar(&c.SyncDir, "sync", "", "with -shard: a directory, new and the same for every shard, through which the shards agree on the run, start sending together and learn how much was sent in all")
	fs.DurationVar(&c.SyncTimeout, "sync-timeout", 10*time.Minute, "with -sync: how long to wait for the other shards at each step")
	fs.IntVar(&c.SenderNodes, "sender-nodes", 0, "put the senders on the first N -url only (0: spread like every client); the others then receive only from other servers")
	fs.BoolVar(&c.Rejoin, "rejoin", false, "dial a client again when the server disconnects it while messages flow (a node killed and restarted); it is then counted as rejoined, with what it received, never as a receiver")
	fs.BoolVar(&c.Track, "track", false, "every client records which (sender, sequence) it got, so that messages missed by every client of a server (a relay loss) are told from one client's loss and set against the servers' gochat_cluster_* loss counters")
}

// parseShard parses "i/k" with 0 <= i < k.
func parseShard(v string) (i, k int, err error) {
	a, b, ok := strings.Cut(v, "/")
	i, err1 := strconv.Atoi(a)
	k, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || k < 1 || i < 0 || i >= k {
		return 0, 0, fmt.Errorf("-shard %q: want i/k with 0 <= i < k", v)
	}
	return i, k, nil
}

// checkShards validates the multi-server and shard flags.
func checkShards(cfg *Config) error {
	switch {
	case cfg.Shards > 1 && cfg.SyncDir == "":
		return errors.New("-shard i/k with k > 1 needs -sync DIR (the same new directory for every shard)")
	case cfg.Shards > cfg.Conns:
		return fmt.Errorf("-shard: %d shards for %d clients", cfg.Shards, cfg.Conns)
	case cfg.SenderNodes < 0 || cfg.SenderNodes > len(cfg.targets()):
		return fmt.Errorf("-sender-nodes must be between 0 and the number of -url (%d)", len(cfg.targets()))
	}
	return nil
}

// targets returns the servers of the run: cfg.Nodes after prepare, else
// the one -url (tests build a Config without prepare).
func (cfg *Config) targets() []nodeTarget {
	if len(cfg.Nodes) > 0 {
		return cfg.Nodes
	}
	if len(cfg.URLs) > 1 {
		out := make([]nodeTarget, len(cfg.URLs))
		for i, u := range cfg.URLs {
			out[i] = nodeTarget{URL: u}
		}
		return out
	}
	return []nodeTarget{{URL: cfg.URL, MetricsURL: cfg.MetricsURL, PID: cfg.PID}}
}

// perNode reports whether the run reports per-server figures: several
// servers, or one shard of several processes (merge needs them).
func (cfg *Config) perNode() bool { return len(cfg.targets()) > 1 || cfg.Shards > 1 }

// shardRange is the global ids of the clients this process opens.
func (cfg *Config) shardRange() (lo, hi int) {
	if cfg.Shards <= 1 {
		return 0, cfg.Conns
	}
	return cfg.Shard * cfg.Conns / cfg.Shards, (cfg.Shard + 1) * cfg.Conns / cfg.Shards
}

// nodeOf is the index of the server client id dials.
func (cfg *Config) nodeOf(id int) int {
	n := len(cfg.targets())
	if id < cfg.Senders && cfg.SenderNodes > 0 {
		n = cfg.SenderNodes
	}
	return id % n
}

// nodeWatch samples one server through its lifetimes (a restart is a new
// process, with its CPU and counters from zero).
type nodeWatch struct {
	t    nodeTarget
	http *http.Client

	mu       sync.Mutex
	comm     string  // the process's name, to find it again after a restart
	life     float64 // pid, or process_start_time_seconds without one
	lastCPU  float64
	haveCPU  bool               // lastCPU is this lifetime's baseline
	haveLast bool               // last is this lifetime's baseline
	cpu      float64            // CPU seconds summed over the lifetimes seen
	last     map[string]float64 // gochat_cluster_* counters of this lifetime
	counters map[string]float64 // their increases summed over lifetimes
	restarts int
	down     int // samples that found neither the process nor /metrics
	latest   serverSample
	sampled  bool
}

func newNodeWatch(t nodeTarget) *nodeWatch {
	w := &nodeWatch{t: t, http: &http.Client{Timeout: 3 * time.Second}, counters: map[string]float64{}}
	if t.PID > 0 {
		w.comm = procComm(t.PID)
	}
	return w
}

// clusterCounter reports whether a /metrics sample is one of the cluster
// relay's counters the report follows.
func clusterCounter(name string) bool {
	base, _, _ := strings.Cut(name, "{") // gochat_cluster_dropped_total{reason="flood"}
	return strings.HasPrefix(base, "gochat_cluster_") && strings.HasSuffix(base, "_total")
}

// sample observes the server once and folds what changed into the sums.
func (w *nodeWatch) sample(ctx context.Context) {
	w.mu.Lock()
	pid, had := w.t.PID, w.comm != ""
	w.mu.Unlock()
	if w.t.autoPID && had && (pid == 0 || !procAlive(pid)) {
		// The process found at the start is gone: look for its successor.
		pid = findListenerPIDNamed(w.t.URL, w.comm)
	}
	var m map[string]float64
	if w.t.MetricsURL != "" {
		smp := &sampler{metricsURL: w.t.MetricsURL, http: w.http}
		m = smp.metrics(ctx)
	}
	var s serverSample
	if pid > 0 {
		s.RSS, s.CPU, s.FDs = procRSS(pid), procCPU(pid), procFDs(pid)
	}
	if v, ok := m["process_resident_memory_bytes"]; ok && s.RSS == nil {
		s.RSS = ptr(uint64(v))
	}
	if v, ok := m["process_cpu_seconds_total"]; ok && s.CPU == nil {
		s.CPU = ptr(v)
	}
	if v, ok := m["process_open_fds"]; ok && s.FDs == nil {
		s.FDs = ptr(int(v))
	}
	if v, ok := m["go_goroutines"]; ok {
		s.Goroutines = ptr(int(v))
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	w.latest = s
	if m == nil && s.CPU == nil {
		w.down++
		return
	}
	life := float64(pid)
	if pid == 0 {
		life = m["process_start_time_seconds"]
	}
	w.t.PID = pid
	if pid > 0 && w.comm == "" {
		w.comm = procComm(pid)
	}
	fresh := w.sampled && life != w.life
	for k, v := range m {
		if clusterCounter(k) && v < w.last[k] {
			fresh = true // a counter went back: the process restarted
		}
	}
	if fresh { // a new process: its CPU and counters start from zero
		w.restarts++
		w.lastCPU, w.haveCPU = 0, true
		w.last, w.haveLast = nil, true
	}
	if s.CPU != nil {
		if w.haveCPU {
			w.cpu += *s.CPU - w.lastCPU
		}
		w.lastCPU, w.haveCPU = *s.CPU, true
	}
	if m != nil {
		next := map[string]float64{}
		for k, v := range m {
			if !clusterCounter(k) {
				continue
			}
			next[k] = v
			if w.haveLast {
				w.counters[k] += v - w.last[k]
			} else {
				w.counters[k] += 0 // known from the first sample on
			}
		}
		w.last, w.haveLast = next, true
	}
	w.life, w.sampled = life, true
}

// nodeMark is a nodeWatch's sums at one instant.
type nodeMark struct {
	cpu      float64
	counters map[string]float64
	restarts int
	latest   serverSample
}

func (w *nodeWatch) mark() nodeMark {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := make(map[string]float64, len(w.counters))
	for k, v := range w.counters {
		c[k] = v
	}
	return nodeMark{cpu: w.cpu, counters: c, restarts: w.restarts, latest: w.latest}
}

// nodeWatches samples every server of a run, also every second between
// open and close so that a restart between them is seen.
type nodeWatches struct {
	w      []*nodeWatch
	before []nodeMark
	stop   chan struct{}
	done   chan struct{}
}

func newNodeWatches(cfg *Config) *nodeWatches {
	ws := &nodeWatches{}
	for _, t := range cfg.targets() {
		ws.w = append(ws.w, newNodeWatch(t))
	}
	return ws
}

func (ws *nodeWatches) sampleAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, w := range ws.w {
		wg.Go(func() { w.sample(ctx) })
	}
	wg.Wait()
}

// open samples every server as the measured window opens and starts the
// ticker.
func (ws *nodeWatches) open(ctx context.Context) {
	ws.sampleAll(ctx)
	ws.before = ws.before[:0]
	for _, w := range ws.w {
		ws.before = append(ws.before, w.mark())
	}
	ws.stop, ws.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ws.done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ws.stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				ws.sampleAll(ctx)
			}
		}
	}()
}

// nodeWindow is what one server did in the measured window.
type nodeWindow struct {
	server   ServerStats
	counters map[string]float64
	restarts int
}

// close stops the ticker, samples once more and returns each server's
// window (nil if open was never called).
func (ws *nodeWatches) close(ctx context.Context) []nodeWindow {
	if ws.stop == nil {
		return nil
	}
	close(ws.stop)
	<-ws.done
	ws.stop = nil
	ws.sampleAll(ctx)
	out := make([]nodeWindow, len(ws.w))
	for i, w := range ws.w {
		a, b := w.mark(), ws.before[i]
		s := a.latest
		out[i].server = ServerStats{RSSBytes: s.RSS, FDs: s.FDs, Goroutines: s.Goroutines}
		if s.CPU != nil || a.cpu != b.cpu {
			out[i].server.CPUSeconds = ptr(a.cpu - b.cpu)
		}
		if len(a.counters) > 0 {
			out[i].counters = map[string]float64{}
			for k, v := range a.counters {
				out[i].counters[k] = v - b.counters[k]
			}
		}
		out[i].restarts = a.restarts - b.restarts
	}
	return out
}

// procAlive reports whether pid is a live (not zombie) process.
func procAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

// procComm is the command name of pid ("" when unknown).
func procComm(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// findListenerPIDNamed is findListenerPID looking only at processes named
// comm (all when comm is ""): a bench process holds thousands of sockets
// that are not worth reading links for while a node restarts.
func findListenerPIDNamed(wsURL, comm string) int {
	if comm == "" {
		return findListenerPID(wsURL)
	}
	return findListenerPIDIn(wsURL, func(dir string) bool {
		b, err := os.ReadFile(filepath.Join(dir, "comm"))
		return err == nil && strings.TrimSpace(string(b)) == comm
	})
}

// nodeResults splits the run's figures by server: receivers and gone as
// splitClients sorted them, win from nodeWatches.close (nil: no window),
// sent the messages every receiver was owed. Read after the readers exited.
func (f *fleet) nodeResults(receivers, gone []*client, win []nodeWindow, sent uint64) []NodeResult {
	targets := f.cfg.targets()
	out := make([]NodeResult, len(targets))
	for i, t := range targets {
		out[i].URL = t.URL
	}
	for _, c := range f.clients {
		n := &out[c.node]
		n.Clients++
		if c.up.Load() {
			n.Connected++
		} else {
			n.ConnectFailed++
		}
		if c.sending {
			n.Senders++
		}
	}
	byNode := make([][]*client, len(targets))
	for _, c := range receivers {
		byNode[c.node] = append(byNode[c.node], c)
	}
	for _, c := range gone {
		out[c.node].Disconnected++
	}
	for i := range out {
		n := &out[i]
		n.Receivers = len(byNode[i])
		for _, c := range byNode[i] {
			n.Deliveries += c.deliveries.Load()
			n.OutOfOrder += c.outOfOrder
		}
		n.Expected = sent * uint64(n.Receivers)
		n.Lost = int64(n.Expected) - int64(n.Deliveries)
		h := mergeHist(byNode[i])
		n.Latency = latencyOf(h)
		if f.cfg.Shards > 1 && h != nil {
			n.LatencyHist = encodeHist(h)
		}
		if win != nil {
			n.Server, n.Counters, n.Restarts = win[i].server, win[i].counters, win[i].restarts
			if n.Server.CPUSeconds != nil && n.Deliveries > 0 {
				n.CPUUsPerDeliver = ptr(*n.Server.CPUSeconds * 1e6 / float64(n.Deliveries))
			}
		}
		if f.track != nil {
			n.Missing = f.track.missing(byNode[i], f.lastSeq)
		}
	}
	for _, c := range f.rejoined {
		out[c.node].Rejoined++
		out[c.node].RejoinedDeliveries += c.deliveries.Load()
	}
	return out
}

// sumServers adds up the servers' figures; a field is nil when no server
// had it.
func sumServers(nodes []NodeResult) ServerStats {
	var s ServerStats
	for _, n := range nodes {
		s.RSSBytes = addPtr(s.RSSBytes, n.Server.RSSBytes)
		s.CPUSeconds = addPtr(s.CPUSeconds, n.Server.CPUSeconds)
		s.FDs = addPtr(s.FDs, n.Server.FDs)
		s.Goroutines = addPtr(s.Goroutines, n.Server.Goroutines)
	}
	return s
}

func addPtr[T uint64 | float64 | int](sum, v *T) *T {
	switch {
	case v == nil:
		return sum
	case sum == nil:
		return ptr(*v)
	}
	return ptr(*sum + *v)
}

// finishNodes completes a per-server result: Server is the sum over the
// servers, and with -track the loss verdict (each node's Missing map is
// kept only in a shard's JSON, for merge).
func finishNodes(res *Result, messages int, track, keepMissing bool) {
	res.Server = sumServers(res.Nodes)
	if track {
		res.Tracking = trackSummary(res.Nodes, messages, res.Lost)
	}
	if !keepMissing {
		for i := range res.Nodes {
			res.Nodes[i].Missing = nil
		}
	}
}
