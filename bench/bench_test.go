package main

import (
	"bufio"
	"bytes"
	"context"
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
// reported as such, while the healthy clients lose nothing. Healthy
// clients the server drops too (a slow -race run) must show up as
// disconnects, not as loss.
func TestSlow(t *testing.T) {
	t.Parallel()
	const conns, slow = 12, 3
	ts := startTestServer(t, &testServer{victim: -1, queue: 150, sndbuf: 4096})
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
	if res.Disconnected != healthyGone || res.Receivers != conns-slow-healthyGone {
		t.Errorf("disconnected %d receivers %d, server dropped %d healthy clients", res.Disconnected, res.Receivers, healthyGone)
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
