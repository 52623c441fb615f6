package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// multiConfig is testConfig over every node of ts, prepared as the
// command line would be (per-node /metrics, pids looked up by port).
func multiConfig(t *testing.T, ts *testServer, conns int) *Config {
	t.Helper()
	cfg := testConfig(ts, conns)
	cfg.URL = ""
	cfg.URLs = ts.urls()
	if err := prepare(cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestBroadcastSeveralServers spreads 30 clients over three servers that
// share one chat: every client counts every message whichever server its
// sender is on, and the per-server figures add up to the totals.
func TestBroadcastSeveralServers(t *testing.T) {
	t.Parallel()
	ts := startTestServer(t, &testServer{victim: -1, nodes: 3})
	const conns = 30
	res := run(t, runBroadcast, multiConfig(t, ts, conns))
	measured, _, _ := ts.counters()

	if res.Sent == 0 || res.Sent != uint64(measured) {
		t.Fatalf("sent %d, server received %d", res.Sent, measured)
	}
	if res.Lost != 0 || res.Receivers != conns || res.Deliveries != res.Sent*conns {
		t.Fatalf("lost %d receivers %d deliveries %d", res.Lost, res.Receivers, res.Deliveries)
	}
	if res.URL != strings.Join(ts.urls(), ",") {
		t.Errorf("url %q", res.URL)
	}
	if len(res.Nodes) != 3 {
		t.Fatalf("%d nodes", len(res.Nodes))
	}
	var del uint64
	var samples int64
	for i, n := range res.Nodes {
		if n.URL != ts.urls()[i] || n.Clients != 10 || n.Connected != 10 || n.Receivers != 10 || n.Senders != 1 {
			t.Errorf("node %d: %+v", i, n)
		}
		if n.Lost != 0 || n.Deliveries != res.Sent*10 || n.Expected != n.Deliveries {
			t.Errorf("node %d: lost %d deliveries %d expected %d", i, n.Lost, n.Deliveries, n.Expected)
		}
		if n.Latency == nil || n.Latency.Count != int64(n.Deliveries) {
			t.Errorf("node %d: latency %+v for %d deliveries", i, n.Latency, n.Deliveries)
		}
		if n.LatencyHist != "" || n.Missing != nil {
			t.Errorf("node %d: a one-process run keeps its histogram and missing map out of the JSON", i)
		}
		del += n.Deliveries
		samples += n.Latency.Count
	}
	if del != res.Deliveries || res.Latency == nil || samples != res.Latency.Count {
		t.Errorf("nodes add up to %d deliveries, %d samples; totals %d, %+v", del, samples, res.Deliveries, res.Latency)
	}
	var table bytes.Buffer
	writeTable(&table, &res)
	if !strings.Contains(table.String(), "node 2: "+ts.urls()[2]) {
		t.Errorf("table has no per-node rows:\n%s", table.String())
	}
}

// TestSenderNodes puts every sender on the first server.
func TestSenderNodes(t *testing.T) {
	t.Parallel()
	ts := startTestServer(t, &testServer{victim: -1, nodes: 2})
	cfg := multiConfig(t, ts, 10)
	cfg.SenderNodes = 1
	res := run(t, runBroadcast, cfg)
	if res.Nodes[0].Senders != 3 || res.Nodes[1].Senders != 0 || res.Lost != 0 {
		t.Fatalf("senders %d/%d lost %d", res.Nodes[0].Senders, res.Nodes[1].Senders, res.Lost)
	}
	if res.Nodes[0].Clients+res.Nodes[1].Clients != 10 {
		t.Fatalf("clients %d + %d", res.Nodes[0].Clients, res.Nodes[1].Clients)
	}
}

// TestBroadcastNodeLoss has one server lose every 4th message for all its
// clients (a relay's loss) and every server duplicate every 5th: -track
// must put the loss on that server exactly, tell it from duplicates, and
// call it silent unless the server's cluster counter counted it.
func TestBroadcastNodeLoss(t *testing.T) {
	t.Parallel()
	for _, counted := range []bool{true, false} {
		t.Run(fmt.Sprintf("counted=%t", counted), func(t *testing.T) {
			t.Parallel()
			ts := startTestServer(t, &testServer{victim: -1, nodes: 3, dropNode: 1, nodeDropEvery: 4, nodeDropCounted: counted, dupEvery: 5})
			const conns = 30
			cfg := multiConfig(t, ts, conns)
			cfg.Track = true
			cfg.Drain = 500 * time.Millisecond // the loss is real
			res := run(t, runBroadcast, cfg)
			ts.mu.Lock()
			measured, drops, dups := ts.measured, ts.nodeDrops[1], ts.dupDeliveries
			ts.mu.Unlock()

			if res.Sent != uint64(measured) || drops == 0 || dups == 0 {
				t.Fatalf("sent %d measured %d drops %d dups %d", res.Sent, measured, drops, dups)
			}
			if want := int64(drops*10) - int64(dups); res.Lost != want {
				t.Errorf("lost %d, want %d dropped - %d duplicated", res.Lost, drops*10, dups)
			}
			if res.OutOfOrder != uint64(dups) {
				t.Errorf("out of order %d, want %d duplicates", res.OutOfOrder, dups)
			}
			tr := res.Tracking
			if tr == nil {
				t.Fatal("no tracking")
			}
			if tr.Messages != measured || tr.MissedByNode != drops || tr.LostWithNode != uint64(drops*10) || tr.LostAlone != -int64(dups) {
				t.Errorf("tracking %+v; want %d messages, %d missed by node 1 (%d deliveries)", *tr, measured, drops, drops*10)
			}
			for i, n := range res.Nodes {
				want := 0
				if i == 1 {
					want = drops
				}
				if deref(n.MissedWhole) != want || deref(n.MissedPartly) != 0 {
					t.Errorf("node %d: missed %v/%v, want %d/0", i, deref(n.MissedWhole), deref(n.MissedPartly), want)
				}
			}
			wantCounted, wantSilent := float64(drops), 0.0
			if !counted {
				wantCounted, wantSilent = 0, float64(drops)
			}
			if tr.Counted != wantCounted || tr.Silent != wantSilent {
				t.Errorf("counted %v silent %v, want %v %v (node counters %v)", tr.Counted, tr.Silent, wantCounted, wantSilent, res.Nodes[1].Counters)
			}
		})
	}
}

// runShards runs broadcast as k shards of one run in this process, each
// with its own Config from mk, and returns their results after a JSON
// round trip (what bench merge reads).
func runShards(t *testing.T, k int, mk func() *Config) []Result {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "sync")
	out := make([]Result, k)
	errs := make([]error, k)
	var wg sync.WaitGroup
	for i := range k {
		cfg := mk()
		cfg.Shard, cfg.Shards, cfg.SyncDir, cfg.SyncTimeout = i, k, dir, 20*time.Second
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := runBroadcast(ctx, cfg)
			errs[i] = err
			var b bytes.Buffer
			writeJSON(&b, &res)
			if err := json.Unmarshal(b.Bytes(), &out[i]); err != nil {
				errs[i] = err
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("shard %d: %v", i, err)
		}
	}
	return out
}

// TestShardsMerge runs one broadcast as three processes' worth of shards
// over two servers, senders split over two shards, one server losing
// every 3rd message: each shard and the merge count exactly what the
// server did, and the merged latency comes from the shards' histograms.
func TestShardsMerge(t *testing.T) {
	t.Parallel()
	ts := startTestServer(t, &testServer{victim: -1, nodes: 2, dropNode: 1, nodeDropEvery: 3, nodeDropCounted: true})
	const conns, senders = 30, 12
	parts := runShards(t, 3, func() *Config {
		cfg := multiConfig(t, ts, conns)
		cfg.Senders = senders
		cfg.Rate = 20
		cfg.Track = true
		cfg.Drain = 500 * time.Millisecond
		return cfg
	})
	ts.mu.Lock()
	measured, drops := ts.measured, ts.nodeDrops[1]
	ts.mu.Unlock()
	if drops == 0 {
		t.Fatal("the server dropped nothing")
	}

	var sentHere uint64
	for i, p := range parts {
		if p.Shard == nil || p.Shard.Index != i || p.Sent != uint64(measured) || p.Conns != 10 {
			t.Fatalf("shard %d: %+v sent %d conns %d", i, p.Shard, p.Sent, p.Conns)
		}
		sentHere += p.Shard.Sent
		if want := int64(drops * p.Nodes[1].Receivers); p.Lost != want || p.Nodes[0].Lost != 0 {
			t.Errorf("shard %d: lost %d (node 0: %d), want %d", i, p.Lost, p.Nodes[0].Lost, want)
		}
		for j, n := range p.Nodes {
			if n.Latency != nil && n.LatencyHist == "" {
				t.Errorf("shard %d node %d: no histogram in the JSON", i, j)
			}
		}
	}
	if sentHere != uint64(measured) || parts[2].Shard.Sent != 0 || parts[1].Shard.Sent == 0 {
		t.Errorf("sent by the shards %d, %d, %d; server measured %d", parts[0].Shard.Sent, parts[1].Shard.Sent, parts[2].Shard.Sent, measured)
	}
	if parts[0].Shard.RunID != parts[2].Shard.RunID {
		t.Errorf("run ids %s, %s", parts[0].Shard.RunID, parts[2].Shard.RunID)
	}

	m, err := mergeResults([]Result{parts[2], parts[0], parts[1]})
	if err != nil {
		t.Fatal(err)
	}
	if m.Conns != conns || m.Connected != conns || m.Receivers != conns || m.Senders != senders || m.Merged != 3 || m.Shard != nil {
		t.Errorf("merged conns %d connected %d receivers %d senders %d merged %d", m.Conns, m.Connected, m.Receivers, m.Senders, m.Merged)
	}
	if want := uint64(measured)*conns - uint64(drops*15); m.Deliveries != want || m.Lost != int64(drops*15) || m.Expected != uint64(measured)*conns {
		t.Errorf("merged deliveries %d lost %d expected %d; want %d, %d", m.Deliveries, m.Lost, m.Expected, want, drops*15)
	}
	if m.Latency == nil || m.Latency.Count != int64(m.Deliveries) {
		t.Errorf("merged latency %+v for %d deliveries", m.Latency, m.Deliveries)
	}
	if n := m.Nodes[1]; n.Clients != 15 || n.Receivers != 15 || deref(n.MissedWhole) != drops || n.Lost != int64(drops*15) || n.Latency.Count != int64(n.Deliveries) {
		t.Errorf("merged node 1: %+v", n)
	}
	if tr := m.Tracking; tr == nil || tr.MissedByNode != drops || tr.Counted != float64(drops) || tr.Silent != 0 || tr.LostAlone != 0 {
		t.Errorf("merged tracking %+v", tr)
	}
	for _, n := range m.Nodes {
		if n.Missing != nil || n.LatencyHist != "" {
			t.Error("the merged JSON keeps no missing maps or histograms")
		}
	}
}

// TestMergeRefuses results that are not every shard of one run once.
func TestMergeRefuses(t *testing.T) {
	t.Parallel()
	shard := func(i, k int, run string) Result {
		return Result{Scenario: "broadcast", Shard: &ShardInfo{Index: i, Of: k, RunID: run}}
	}
	for name, parts := range map[string][]Result{
		"missing":   {shard(0, 3, "a"), shard(1, 3, "a")},
		"twice":     {shard(0, 2, "a"), shard(0, 2, "a")},
		"two runs":  {shard(0, 2, "a"), shard(1, 2, "b")},
		"not shard": {shard(0, 2, "a"), {Scenario: "broadcast"}},
		"nothing":   nil,
	} {
		if _, err := mergeResults(parts); err == nil {
			t.Errorf("%s: merged", name)
		}
	}
	one := Result{Scenario: "broadcast", Sent: 7}
	if m, err := mergeResults([]Result{one}); err != nil || m.Sent != 7 {
		t.Errorf("one unsharded result: %v, %+v", err, m)
	}
	// bench merge on files: a missing shard is an error exit, not a report.
	dir := t.TempDir()
	path := filepath.Join(dir, "a.json")
	var b bytes.Buffer
	r := shard(0, 2, "a")
	writeJSON(&b, &r)
	writeFileT(t, path, b.Bytes())
	var stdout, stderr bytes.Buffer
	if code := mergeMain([]string{path}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "2 shards, 1 given") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}

// TestShardFlags checks the flags of several servers and shards.
func TestShardFlags(t *testing.T) {
	t.Parallel()
	var l urlList
	l.Set("ws://127.0.0.1:1/ws, ws://127.0.0.1:2/ws")
	l.Set("ws://127.0.0.1:3/ws")
	if len(l) != 3 || l[1] != "ws://127.0.0.1:2/ws" {
		t.Errorf("urls %q", l)
	}
	for v, ok := range map[string]bool{"0/1": true, "2/3": true, "3/3": false, "-1/2": false, "1": false, "a/b": false} {
		if _, _, err := parseShard(v); (err == nil) != ok {
			t.Errorf("-shard %s: %v", v, err)
		}
	}
	cfg := &Config{URLs: l, Conns: 10, Shard: 1, Shards: 2, PID: -1}
	if err := prepare(cfg); err == nil || !strings.Contains(err.Error(), "-sync") {
		t.Errorf("a shard without -sync: %v", err)
	}
	cfg = &Config{URLs: l, Conns: 10, Shard: 1, Shards: 2, SyncDir: t.TempDir(), PID: -1}
	if err := prepare(cfg); err != nil {
		t.Fatal(err)
	}
	if lo, hi := cfg.shardRange(); lo != 5 || hi != 10 || len(cfg.Nodes) != 3 || cfg.Nodes[2].MetricsURL != "http://127.0.0.1:3/metrics" || cfg.Nodes[1].PID != 0 {
		t.Errorf("range %d..%d nodes %+v", lo, hi, cfg.Nodes)
	}
	if err := prepareFor("storm", &Config{URLs: l, Conns: 10}); err == nil {
		t.Error("storm took several -url")
	}
	if err := prepare(&Config{URLs: l, Conns: 10, MetricsURL: "http://127.0.0.1:9/metrics"}); err == nil {
		t.Error("-metrics took one URL for several servers")
	}
	if err := prepare(&Config{URLs: l, Conns: 10, PID: -1, SenderNodes: 4}); err == nil {
		t.Error("-sender-nodes past the -url count")
	}
}

// TestNodeWatchRestart follows a server through a restart: CPU and
// cluster counters are summed over both lives, the restart is counted.
func TestNodeWatchRestart(t *testing.T) {
	t.Parallel()
	type life struct{ start, cpu, drops float64 }
	steps := []life{{1, 10, 5}, {1, 12, 8}, {2, 1, 2}, {2, 3, 3}}
	var mu sync.Mutex
	step := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		s := steps[step]
		mu.Unlock()
		fmt.Fprintf(w, "process_start_time_seconds %g\nprocess_cpu_seconds_total %g\ngochat_cluster_receive_drops_total %g\ngochat_cluster_connected 1\n", s.start, s.cpu, s.drops)
	}))
	defer srv.Close()
	ws := &nodeWatches{w: []*nodeWatch{newNodeWatch(nodeTarget{URL: "ws://x/ws", MetricsURL: srv.URL})}}
	ctx := context.Background()
	ws.sampleAll(ctx)
	ws.before = []nodeMark{ws.w[0].mark()}
	for i := 1; i < len(steps); i++ {
		mu.Lock()
		step = i
		mu.Unlock()
		ws.sampleAll(ctx)
	}
	a, b := ws.w[0].mark(), ws.before[0]
	if cpu := a.cpu - b.cpu; cpu != 2+1+2 {
		t.Errorf("cpu %v, want 5", cpu)
	}
	if d := a.counters["gochat_cluster_receive_drops_total"] - b.counters["gochat_cluster_receive_drops_total"]; d != 3+2+1 {
		t.Errorf("drops %v, want 6", d)
	}
	if _, ok := a.counters["gochat_cluster_connected"]; ok {
		t.Error("a gauge was followed as a counter")
	}
	if a.restarts != 1 {
		t.Errorf("restarts %d", a.restarts)
	}
}

// TestIdleSeveralServers holds clients on two servers.
func TestIdleSeveralServers(t *testing.T) {
	t.Parallel()
	ts := startTestServer(t, &testServer{victim: -1, nodes: 2})
	res := run(t, runIdle, multiConfig(t, ts, 20))
	if len(res.Nodes) != 2 || res.Receivers != 20 {
		t.Fatalf("nodes %d alive %d", len(res.Nodes), res.Receivers)
	}
	for i, n := range res.Nodes {
		if n.Clients != 10 || n.Receivers != 10 || n.Disconnected != 0 {
			t.Errorf("node %d: %+v", i, n)
		}
	}
}

func writeFileT(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRejoin has the server close one client mid-run: with -rejoin it is
// dialled again, and neither it nor what it gets after coming back blurs
// the receivers' exact counts.
func TestRejoin(t *testing.T) {
	t.Parallel()
	const conns = 20
	ts := startTestServer(t, &testServer{victim: conns - 1, closeAfter: 5, nodes: 2})
	cfg := multiConfig(t, ts, conns)
	cfg.Rejoin = true
	res := run(t, runBroadcast, cfg)
	measured, _, _ := ts.counters()
	t.Logf("rejoined %v, node 1: %+v", deref(res.Rejoined), res.Nodes[1])

	if res.Sent != uint64(measured) || res.Disconnected != 1 || res.Receivers != conns-1 {
		t.Fatalf("sent %d (server %d) disconnected %d receivers %d", res.Sent, measured, res.Disconnected, res.Receivers)
	}
	if res.Lost != 0 || res.Deliveries != res.Sent*(conns-1) {
		t.Errorf("lost %d deliveries %d, want 0 and %d", res.Lost, res.Deliveries, res.Sent*(conns-1))
	}
	if res.Rejoined == nil || *res.Rejoined > 1 || res.Nodes[0].Rejoined+res.Nodes[1].Rejoined != *res.Rejoined || res.Nodes[0].Rejoined != 0 {
		t.Errorf("rejoined %v, per node %d/%d (the victim is on node 1)", res.Rejoined, res.Nodes[0].Rejoined, res.Nodes[1].Rejoined)
	}
}

// The JetStream relay's counters: which ones are losses, on which side,
// and its labeled drop counter is read with its labels.
func TestClusterLossCounters(t *testing.T) {
	m := parseMetrics(strings.NewReader("gochat_cluster_dropped_total{reason=\"flood\"} 7\ngochat_disconnects_total{code=\"1000\"} 3\ngochat_cluster_gaps_total 2\n"))
	if m[`gochat_cluster_dropped_total{reason="flood"}`] != 7 || m["gochat_cluster_gaps_total"] != 2 || len(m) != 2 {
		t.Fatalf("parsed %v", m)
	}
	if !clusterCounter(`gochat_cluster_dropped_total{reason="flood"}`) {
		t.Error("labeled relay counter not followed")
	}
	for name, want := range map[string][2]bool{
		`gochat_cluster_dropped_total{reason="flood"}`: {true, false},
		"gochat_cluster_gaps_total":                    {true, false},
		"gochat_cluster_gaps_unknown_total":            {true, false},
		"gochat_cluster_publish_rejects_total":         {true, true},
		"gochat_cluster_unsent_total":                  {true, true},
		"gochat_cluster_overflow_total":                {false, false}, // recovered from the stream
		"gochat_cluster_recovered_total":               {false, false},
		"gochat_cluster_published_total":               {false, false},
		"gochat_cluster_local_deliveries_total":        {false, false},
	} {
		if loss, pub := lossCounter(name); loss != want[0] || pub != want[1] {
			t.Errorf("%s: loss %v publish side %v, want %v", name, loss, pub, want)
		}
	}
}
