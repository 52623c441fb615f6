package main

import (
	"bufio"
	"bytes"
	"context"
	"math"
	"net"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// testConfig is a small, quick run against ts. The tests assert counts,
// never timings.
func testConfig(ts *testServer, conns int) *Config {
	return &Config{
		URL:         ts.url(),
		Conns:       conns,
		DialWorkers: 8,
		Timeout:     5 * time.Second,
		LocalAddrs:  1,
		Senders:     3,
		Rate:        100,
		Duration:    500 * time.Millisecond,
		Size:        80,
		Drain:       2 * time.Second,
		Hold:        100 * time.Millisecond,
	}
}

func run(t *testing.T, fn func(context.Context, *Config) (Result, error), cfg *Config) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := fn(ctx, cfg)
	if err != nil {
		t.Fatalf("run: %v (result %+v)", err, res)
	}
	return res
}

func TestBroadcastLossless(t *testing.T) {
	t.Parallel()
	ts := startTestServer(t, &testServer{victim: -1})
	const conns = 20
	res := run(t, runBroadcast, testConfig(ts, conns))
	measured, _, _ := ts.counters()

	if res.Connected != conns || res.ConnectFailed != 0 || res.Unconfirmed != 0 {
		t.Fatalf("connected %d failed %d unconfirmed %d", res.Connected, res.ConnectFailed, res.Unconfirmed)
	}
	if res.Sent == 0 || res.Sent != uint64(measured) {
		t.Fatalf("sent %d, server received %d", res.Sent, measured)
	}
	if res.Lost != 0 || res.Deliveries != res.Sent*conns || res.Receivers != conns {
		t.Fatalf("lost %d deliveries %d receivers %d, want 0, %d, %d", res.Lost, res.Deliveries, res.Receivers, res.Sent*conns, conns)
	}
	if res.Disconnected != 0 || res.OutOfOrder != 0 || res.Unparsed != 0 {
		t.Fatalf("disconnected %d out of order %d unparsed %d", res.Disconnected, res.OutOfOrder, res.Unparsed)
	}
	if res.Latency == nil || res.Latency.Count != int64(res.Deliveries) {
		t.Fatalf("latency %+v, want %d samples", res.Latency, res.Deliveries)
	}
}

// TestBroadcastLossy runs against a server that drops every 10th message
// for half of the receivers and closes one client mid-run: the harness
// must report exactly the loss and the disconnect the server caused.
func TestBroadcastLossy(t *testing.T) {
	t.Parallel()
	const conns = 20
	ts := startTestServer(t, &testServer{dropEvery: 10, victim: conns - 1, closeAfter: 5})
	cfg := testConfig(ts, conns)
	cfg.Drain = 500 * time.Millisecond // the loss is real: do not wait long for it
	res := run(t, runBroadcast, cfg)
	measured, droppedAlive, _ := ts.counters()

	if res.Sent == 0 || res.Sent != uint64(measured) {
		t.Fatalf("sent %d, server received %d", res.Sent, measured)
	}
	if droppedAlive == 0 {
		t.Fatalf("test server dropped nothing (measured %d)", measured)
	}
	if res.Lost != int64(droppedAlive) {
		t.Errorf("lost %d, server dropped %d for connected receivers", res.Lost, droppedAlive)
	}
	if res.Receivers != conns-1 {
		t.Errorf("receivers %d, want %d", res.Receivers, conns-1)
	}
	if want := res.Sent*(conns-1) - uint64(droppedAlive); res.Deliveries != want {
		t.Errorf("deliveries %d, want %d", res.Deliveries, want)
	}
	if res.Disconnected != 1 || res.DisconnectCodes["1008"] != 1 {
		t.Errorf("disconnected %d codes %v, want 1 × 1008", res.Disconnected, res.DisconnectCodes)
	}
}

// TestSlow checks that non-reading clients dropped by the server are
// reported as such, while the healthy clients lose nothing.
func TestSlow(t *testing.T) {
	t.Parallel()
	const conns, slow = 12, 3
	ts := startTestServer(t, &testServer{victim: -1, queue: 150, slowFrom: conns - slow, sndbuf: 4096})
	cfg := testConfig(ts, conns)
	cfg.Slow = slow
	cfg.Size = 1000
	cfg.Rate = 200 // 3 senders × 0.5 s = 300 messages, twice the queue
	res := run(t, runSlow, cfg)
	slowGone := ts.slowConsumers(func(id int) bool { return id >= conns-slow })
	healthyGone := ts.slowConsumers(func(id int) bool { return id < conns-slow })
	t.Logf("%+v", res)

	if slowGone != slow {
		t.Fatalf("test server dropped %d of the %d slow clients (test setup)", slowGone, slow)
	}
	if res.SlowDisconnected == nil || *res.SlowDisconnected != slow {
		t.Errorf("slow_disconnected %v, want %d", res.SlowDisconnected, slow)
	}
	if healthyGone != 0 {
		t.Fatalf("test server dropped %d healthy clients (test setup)", healthyGone)
	}
	if res.Disconnected != 0 || res.Receivers != conns-slow {
		t.Errorf("disconnected %d receivers %d, want 0 and %d", res.Disconnected, res.Receivers, conns-slow)
	}
	if res.Lost != 0 {
		t.Errorf("lost %d, want 0", res.Lost)
	}
}

func TestStorm(t *testing.T) {
	t.Parallel()
	const conns = 40
	ts := startTestServer(t, &testServer{presence: true, victim: -1})
	res := run(t, runStorm, testConfig(ts, conns))
	const expected = conns * (conns + 1) / 2
	if *res.NoticesExpected != expected || *res.NoticesReceived != expected || *res.NoticesMissing != 0 {
		t.Errorf("notices received %d expected %d missing %d, want %d, %d, 0",
			*res.NoticesReceived, *res.NoticesExpected, *res.NoticesMissing, expected, expected)
	}
	if res.DrainSeconds == nil || res.Disconnected != 0 {
		t.Errorf("drain %v disconnected %d", res.DrainSeconds, res.Disconnected)
	}
}

// TestStormLossy drops some join notices: each drop leaves exactly one
// pair of clients where neither saw the other's notice.
func TestStormLossy(t *testing.T) {
	t.Parallel()
	const conns = 40
	ts := startTestServer(t, &testServer{presence: true, noticeDropEvery: 7, victim: -1})
	cfg := testConfig(ts, conns)
	cfg.Drain = 500 * time.Millisecond
	res := run(t, runStorm, cfg)
	_, _, dropped := ts.counters()
	if dropped == 0 {
		t.Fatal("test server dropped no notice")
	}
	if *res.NoticesMissing != uint64(dropped) || *res.NoticesReceived != conns*(conns+1)/2-uint64(dropped) {
		t.Errorf("missing %d received %d, server dropped %d of %d", *res.NoticesMissing, *res.NoticesReceived, dropped, conns*(conns+1)/2)
	}
}

func TestIdle(t *testing.T) {
	t.Parallel()
	ts := startTestServer(t, &testServer{victim: -1})
	res := run(t, runIdle, testConfig(ts, 10))
	if res.Connected != 10 || res.Receivers != 10 || res.Disconnected != 0 || res.Unconfirmed != 0 {
		t.Errorf("idle: %+v", res)
	}
}

func TestContentRoundTrip(t *testing.T) {
	c := appendContent(nil, "0123abcd", kindMeasured, 1234567890123, 42, 7, 64)
	if len(c) != 64 {
		t.Fatalf("len %d", len(c))
	}
	bc, ok := parseContent(c, "0123abcd")
	if !ok || bc != (benchContent{kind: kindMeasured, ts: 1234567890123, sender: 42, seq: 7}) {
		t.Fatalf("parsed %+v %v", bc, ok)
	}
	if _, ok := parseContent(c, "ffffffff"); ok {
		t.Fatal("accepted another run's content")
	}
	u, content, ok := splitMessage([]byte(`{"username":"System","content":"bx_1 joined the chat"}` + "\n"))
	if !ok || string(u) != "System" || string(content) != "bx_1 joined the chat" {
		t.Fatalf("split %q %q %v", u, content, ok)
	}
}

// TestReadPathAllocs guards the per-frame cost: handling a broadcast frame
// must not allocate once the latency histogram exists.
func TestReadPathAllocs(t *testing.T) {
	f := newFleet(&Config{Size: 64}, 1)
	f.senders = 1
	c := f.clients[0]
	msg := []byte(`{"username":"x","content":"` + string(appendContent(nil, f.runID, kindMeasured, 1, 0, 1, 64)) + `"}`)
	c.handle(msg)
	if n := testing.AllocsPerRun(100, func() { c.handle(msg) }); n != 0 {
		t.Fatalf("%v allocations per frame", n)
	}
}

// discardConn is a net.Conn that swallows writes (the pongs and the close
// reply of readFrames).
type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error)      { return len(p), nil }
func (discardConn) SetWriteDeadline(time.Time) error { return nil }

// TestReadFramesAllocs reads a stream of 1000 broadcast frames, a ping and
// a close, and checks that the whole read path allocates nothing per frame.
func TestReadFramesAllocs(t *testing.T) {
	f := newFleet(&Config{Size: 64, Timeout: time.Second}, 1)
	f.senders = 1
	c := f.clients[0]
	c.nc = discardConn{}
	c.rbuf = make([]byte, 256)
	msg := []byte(`{"username":"x","content":"` + string(appendContent(nil, f.runID, kindMeasured, 1, 0, 1, 64)) + `"}`)
	var stream []byte
	for range 1000 {
		stream = append(stream, 0x81, byte(len(msg)))
		stream = append(stream, msg...)
	}
	stream = append(stream, 0x89, 2, 'h', 'i', 0x88, 2, 0x03, 0xe8)
	c.hist = hdrhistogram.New(1, histMax, histSigFigs)
	allocs := testing.AllocsPerRun(5, func() {
		c.br = bufio.NewReader(bytes.NewReader(stream))
		if code, err := c.readFrames(); code != 1000 || err != nil {
			t.Fatalf("code %d err %v", code, err)
		}
	})
	if allocs > 3 { // the bytes.Reader and bufio.Reader of this test
		t.Fatalf("%v allocations for 1000 frames", allocs)
	}
	if got := c.deliveries.Load(); got != 6000 {
		t.Fatalf("deliveries %d, want 6000", got)
	}
}

// TestSoak runs a short soak: churn must replace clients, the slow clients
// the server drops must be counted (and replaced), and a correct server
// loses nothing.
func TestSoak(t *testing.T) {
	t.Parallel()
	const conns = 50
	ts := startTestServer(t, &testServer{presence: true, victim: -1, queue: 100, sndbuf: 4096})
	cfg := testConfig(ts, conns)
	cfg.Senders = 2
	cfg.Rate = 50 // 100 messages/s of 1 KB: a non-reader fills the 100-message queue in about a second
	cfg.Size = 1000
	cfg.Duration = 3 * time.Second
	cfg.Drain = 2 * time.Second
	cfg.SlowPct = 4 // 2 slow slots
	cfg.Churn = 10
	cfg.Sample = 500 * time.Millisecond
	var progress bytes.Buffer
	cfg.Progress = &progress
	res := run(t, runSoak, cfg)
	measured, _, _ := ts.counters()
	slowDropped := ts.slowConsumers(func(int) bool { return true })
	t.Logf("churned %d slow evicted %d (server dropped %d) disconnected %d %v lost %d sent %d deliveries %d samples %d",
		deref(res.Churned), deref(res.SlowEvicted), slowDropped, res.Disconnected, res.DisconnectCodes, res.Lost, res.Sent, res.Deliveries, len(res.Samples))

	if res.Connected != conns || res.Unconfirmed != 0 {
		t.Fatalf("connected %d unconfirmed %d", res.Connected, res.Unconfirmed)
	}
	if res.Sent == 0 || res.Sent != uint64(measured) {
		t.Errorf("sent %d, server received %d", res.Sent, measured)
	}
	if deref(res.Churned) == 0 || res.ChurnCloseCodes["1000"] != deref(res.Churned) {
		t.Errorf("churned %d, echo codes %v", deref(res.Churned), res.ChurnCloseCodes)
	}
	if res.Lost != 0 || res.OutOfOrder != 0 {
		t.Errorf("lost %d out of order %d, want 0", res.Lost, res.OutOfOrder)
	}
	if ev := deref(res.SlowEvicted); ev == 0 || ev > slowDropped {
		t.Errorf("slow evicted %d, server dropped %d slow consumers", ev, slowDropped)
	}
	if n := 0; true {
		for _, v := range res.SlowCodes {
			n += v
		}
		if n != deref(res.SlowEvicted) {
			t.Errorf("slow codes %v do not add up to %d", res.SlowCodes, deref(res.SlowEvicted))
		}
	}
	if len(res.Samples) < 4 || res.Samples[len(res.Samples)-1].Sent != res.Sent {
		t.Errorf("%d samples, last %+v", len(res.Samples), res.Samples[len(res.Samples)-1])
	}
	if res.Deliveries < res.Sent*(conns/2) || res.Latency == nil {
		t.Errorf("deliveries %d for %d sent, latency %+v", res.Deliveries, res.Sent, res.Latency)
	}
	if res.Baseline == nil || res.Peak == nil || res.After == nil {
		t.Errorf("baseline %v peak %v after %v", res.Baseline, res.Peak, res.After)
	}
	if !bytes.Contains(progress.Bytes(), []byte("[soak ")) {
		t.Errorf("no progress line: %q", progress.String())
	}
}

func TestLatBuckets(t *testing.T) {
	var l latCounts
	for v := int64(1); v <= histMax; v = v*11/10 + 1 {
		i := latIndex(v)
		if i < 0 || i >= latBuckets {
			t.Fatalf("latIndex(%d) = %d", v, i)
		}
		if mid := latValue(i); math.Abs(mid-float64(v)) > 0.035*float64(v)+0.5 {
			t.Fatalf("latIndex(%d) = %d, midpoint %.1f", v, i, mid)
		}
		l[i]++
	}
	if _, ok := l.quantile(0.99); !ok {
		t.Fatal("empty")
	}
}

// TestSoakLossy checks the loss accounting against a server that drops
// every 10th message for half of the receivers (no churn, no slow clients,
// so every drop is owed to a client connected to the end).
func TestSoakLossy(t *testing.T) {
	t.Parallel()
	const conns = 20
	ts := startTestServer(t, &testServer{dropEvery: 10, victim: -1})
	cfg := testConfig(ts, conns)
	cfg.Duration = time.Second
	cfg.Drain = 300 * time.Millisecond
	cfg.Sample = 500 * time.Millisecond
	res := run(t, runSoak, cfg)
	_, droppedAlive, _ := ts.counters()
	if droppedAlive == 0 || res.Lost != int64(droppedAlive) {
		t.Errorf("lost %d, server dropped %d", res.Lost, droppedAlive)
	}
	if res.Disconnected != 0 || deref(res.Churned) != 0 || deref(res.SlowClients) != 0 {
		t.Errorf("disconnected %d churned %d slow %d", res.Disconnected, deref(res.Churned), deref(res.SlowClients))
	}
}

// TestSoakCountsEvictionsStillLingering: the server evicts the slow
// clients just before the end of the run but, like gochat, closes their
// sockets only after a linger. The bench must still count every eviction
// the server made (it used to report 0 while the server counted them all),
// and report the server's count over the same window.
func TestSoakCountsEvictionsStillLingering(t *testing.T) {
	t.Parallel()
	const conns = 20
	ts := startTestServer(t, &testServer{victim: -1, linger: 1500 * time.Millisecond, slowFrom: conns - 2})
	cfg := testConfig(ts, conns)
	cfg.Senders = 2
	cfg.Rate = 50
	cfg.Duration = 2 * time.Second
	cfg.Drain = time.Second
	cfg.SlowPct = 10 // 2 slow clients: ids 18 and 19
	cfg.Sample = 500 * time.Millisecond
	cfg.EvictWait = 5 * time.Second
	cfg.MetricsURL = ts.srv.URL + "/metrics"
	ts.evictSlowAt = 2 * 2 * 50 * 9 / 10 // 90% into the run
	res := run(t, runSoak, cfg)
	dropped := ts.slowConsumers(func(int) bool { return true })
	if dropped != 2 {
		t.Fatalf("test server evicted %d, want 2 (sent %d)", dropped, res.Sent)
	}
	if deref(res.SlowEvicted) != dropped {
		t.Errorf("slow evicted %d, server evicted %d", deref(res.SlowEvicted), dropped)
	}
	if res.ServerSlowConsumers == nil || *res.ServerSlowConsumers != dropped {
		t.Errorf("server slow consumers reported %v, want %d", optInt(res.ServerSlowConsumers), dropped)
	}
}

// Every latency a client records is counted once in a merge, whether it
// is still in the client's batch or already in its histogram, and merging
// the same clients again (a client counted in several groups) gives the
// same histogram.
func TestLatenciesAreAllCounted(t *testing.T) {
	short, long := &client{}, &client{}
	for i := range 100 {
		short.recordLatency(int64(i+1)*1000, 0) // 1..100 µs
	}
	for i := range 3*latBatch + 7 {
		long.recordLatency(int64(1000+i)*1000, 0) // 1,000.. µs
	}
	if long.hist == nil || short.hist != nil {
		t.Fatalf("histograms: long %v, short %v; want only the long run's", long.hist != nil, short.hist != nil)
	}
	for range 2 {
		h := mergeHist([]*client{short, long})
		if got, want := h.TotalCount(), int64(100+3*latBatch+7); got != want {
			t.Fatalf("merged %d latencies, want %d", got, want)
		}
		if h.Min() != 1 || !h.ValuesAreEquivalent(h.Max(), int64(1000+3*latBatch+6)) {
			t.Fatalf("merged range %d..%d µs", h.Min(), h.Max())
		}
	}
	if mergeHist([]*client{{}}) != nil {
		t.Fatal("a client without latencies gave a histogram")
	}
}
