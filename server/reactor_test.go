package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"gochat/server/internal/chatmsg"
)

// joinRaw upgrades a raw client and joins it as name, without reading.
func joinRaw(t testing.TB, s *testServer, name string) *rawConn {
	t.Helper()
	rc := upgradeRaw(t, s)
	rc.write(textFrame(`{"username":"` + name + `"}`))
	return rc
}

func TestOneFileDescriptorPerConnection(t *testing.T) {
	s := startServer(t, Config{Presence: new(bool)})
	base := fdCount(t)
	const n = 300
	conns := make([]*rawConn, n)
	for i := range conns {
		conns[i] = joinRaw(t, s, fmt.Sprintf("u%d", i))
	}
	waitUntil(t, "all joined", func() bool { return s.hub.Members() == n })
	// Each connection costs this process exactly two fds: the test's client
	// end and the server's end. easygo's Handle would dup a third.
	if got := fdCount(t) - base; got != 2*n {
		t.Fatalf("fds grew by %d for %d connections, want %d (one per side)", got, n, 2*n)
	}
	for _, c := range conns {
		c.nc.Close()
	}
	waitUntil(t, "server fds released", func() bool { return s.nconns.Load() == 0 && fdCount(t) == base })
}

func TestSocketsStayNonBlockingAfterRearm(t *testing.T) {
	s := startServer(t, Config{})
	c := join(t, s.url, "alice")
	for i := range 20 { // every message is a wake-up and a re-arm
		c.send(fmt.Sprintf(`{"content":"m%d"}`, i))
		c.waitFor(chatMsg{"alice", fmt.Sprintf("m%d", i)})
	}
	checked := 0
	s.conns.each(func(conn *Conn) {
		flags, err := unix.FcntlInt(uintptr(conn.fd), unix.F_GETFL, 0)
		if err != nil {
			t.Errorf("fcntl: %v", err)
			return
		}
		if flags&unix.O_NONBLOCK == 0 {
			t.Errorf("fd %d lost O_NONBLOCK after re-arming", int(conn.fd))
		}
		checked++
	})
	if checked != 1 {
		t.Fatalf("checked %d connections, want 1", checked)
	}
}

func TestGoroutinesDoNotGrowWithConnections(t *testing.T) {
	n := 2000
	if testing.Short() {
		n = 500
	}
	s := startServer(t, Config{Presence: new(bool)})
	// Warm up: the first connection starts the pool's workers.
	joinRaw(t, s, "warm")
	waitUntil(t, "warm-up joined", func() bool { return s.hub.Members() == 1 })
	base := runtime.NumGoroutine()
	for i := range n {
		joinRaw(t, s, fmt.Sprintf("idle%d", i))
	}
	waitUntil(t, "all joined", func() bool { return s.hub.Members() == n+1 })
	if got := runtime.NumGoroutine(); got > base+s.cfg.Workers {
		t.Fatalf("%d goroutines with %d idle clients, %d before: more than the pool's %d workers", got, n, base, s.cfg.Workers)
	}
}

func TestNoWorkerWaitsOnAPeer(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 200
	}
	s := startServer(t, Config{Workers: 2, Presence: new(bool)})
	// n clients send half a handshake and stop; n send half a frame and stop.
	for range n {
		rc := dialRaw(t, s)
		rc.write([]byte("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr"))
	}
	for i := range n {
		rc := joinRaw(t, s, fmt.Sprintf("half%d", i))
		f := textFrame(`{"content":"never finished"}`)
		rc.write(f[:len(f)/2])
	}
	waitUntil(t, "half-frame clients joined", func() bool { return s.hub.Members() == n })
	// With 2 workers and 2n stalled peers, a new client still joins and
	// round-trips: no worker is waiting on any of them.
	c := dial(t, s.url)
	c.send(`{"username":"newcomer","content":"hi"}`)
	c.waitFor(chatMsg{"newcomer", "hi"})
}

// blocker occupies a pool worker until released.
type blocker struct {
	started chan struct{}
	release chan struct{}
}

func (b *blocker) Run() { close(b.started); <-b.release }

func TestPollerNeverBlocksOrSpinsWhenThePoolIsFull(t *testing.T) {
	s := startServer(t, Config{Workers: 1})
	alice := join(t, s.url, "alice")
	b := &blocker{started: make(chan struct{}), release: make(chan struct{})}
	if err := s.pool.Schedule(b); err != nil {
		t.Fatal(err)
	}
	<-b.started
	before := s.pool.Stats()
	// Events keep arriving while the only worker is busy: a message, and a
	// new client's upgrade. The poller must queue them, not block and not
	// spin (with one-shot registration each event is scheduled once).
	alice.send(`{"content":"queued"}`)
	late := dialRaw(t, s)
	late.write([]byte(upgradeRequest("/ws")))
	waitUntil(t, "work queued behind the busy worker", func() bool { return s.pool.Stats().Waiting >= 2 })
	stalled := s.pool.Stats()
	if n := stalled.Scheduled - before.Scheduled; n > 4 {
		t.Fatalf("%d tasks scheduled for 2 events while the pool was full: the poller is spinning", n)
	}
	if stalled.Queued <= before.Queued {
		t.Fatal("overload not counted")
	}
	if v := gauge(t, s, "gochat_pool_waiting"); v < 2 {
		t.Fatalf("gochat_pool_waiting = %v while 2 tasks wait", v)
	}
	close(b.release)
	alice.waitFor(chatMsg{"alice", "queued"})
	if code := late.status(); code != 101 {
		t.Fatalf("late client got %d", code)
	}
}

func TestQueuedBroadcastsLeaveInOneRoundAndOneWrite(t *testing.T) {
	s := startServer(t, Config{Workers: 1, Presence: new(bool)})
	rc := joinRaw(t, s, "reader")
	waitUntil(t, "joined", func() bool { return s.hub.Members() == 1 })
	b := &blocker{started: make(chan struct{}), release: make(chan struct{})}
	s.pool.Schedule(b)
	<-b.started
	rounds := s.hub.Rounds()
	for i := range 50 {
		if err := s.hub.Publish(chatmsg.DefaultRoom, "bot", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	close(b.release)
	for i := range 50 {
		op, p, err := rc.readFrame(5 * time.Second)
		if err != nil || op != 1 {
			t.Fatalf("frame %d: op %d err %v", i, op, err)
		}
		if want := fmt.Sprintf(`{"username":"bot","content":"%d"}`, i); string(p) != want {
			t.Fatalf("frame %d = %s, want %s", i, p, want)
		}
	}
	// The first message started a round on its own; the 49 published while
	// it waited for a worker went out together in the next one. (The frames
	// can arrive before the round's other shard tasks end: wait for the hub
	// to go idle before counting.)
	waitUntil(t, "hub idle", s.hub.Idle)
	if got := s.hub.Rounds() - rounds; got != 2 {
		t.Fatalf("50 messages took %d rounds, want 2", got)
	}
}

func TestSilentPeerIsDroppedAfterPingIntervalPlusPongTimeout(t *testing.T) {
	s := startServer(t, Config{PingInterval: 100 * time.Millisecond, PongTimeout: 100 * time.Millisecond})
	control := join(t, s.url, "control")
	go func() { // the control reads continuously, so it answers every ping
		for {
			if _, err := control.readRaw(10 * time.Second); err != nil {
				return
			}
		}
	}()
	silent := joinRaw(t, s, "silent")
	waitUntil(t, "silent joined", func() bool { return s.hub.Members() == 2 })
	// The silent client reads nothing and answers no ping.
	waitUntil(t, "silent dropped", func() bool { return s.hub.Members() == 1 })
	_ = silent
	if s.metrics == nil {
		t.Fatal("no metrics")
	}
}

func TestKeepalivePingsKeepAResponsiveClient(t *testing.T) {
	s := startServer(t, Config{PingInterval: 50 * time.Millisecond, PongTimeout: 50 * time.Millisecond})
	rc := joinRaw(t, s, "pinged")
	pings := 0
	for pings < 5 { // answer five pings, across several silence windows
		op, p, err := rc.readFrame(5 * time.Second)
		if err != nil {
			t.Fatalf("after %d pings: %v", pings, err)
		}
		if op == 9 {
			pings++
			rc.write(frame(true, 0, 10, true, p))
		}
	}
	if s.hub.Members() != 1 {
		t.Fatal("a client answering pings was dropped")
	}
}

func TestShutdownSends1001WithoutLeaveNoticesAndRefusesNewClients(t *testing.T) {
	ts, served := startUnmanaged(t)
	s := ts.Server
	var raws []*rawConn
	for i := range 5 {
		raws = append(raws, joinRaw(t, ts, fmt.Sprintf("r%d", i)))
	}
	stuck := joinRaw(t, ts, "stuck") // never reads, never echoes the close
	waitUntil(t, "joined", func() bool { return s.hub.Members() == 6 })

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	shutdown := make(chan error, 1)
	go func() { shutdown <- s.Shutdown(ctx) }()
	waitUntil(t, "draining", s.draining.Load)
	// The well-behaved clients each get 1001 after their own join traffic,
	// and no leave notice of anyone.
	for _, rc := range raws {
		for {
			op, p, err := rc.readFrame(5 * time.Second)
			if err != nil {
				t.Fatalf("no close frame: %v", err)
			}
			if op == 1 && strings.Contains(string(p), "left the chat") {
				t.Fatalf("leave notice during shutdown: %s", p)
			}
			if op == 8 {
				if code := int(p[0])<<8 | int(p[1]); code != 1001 {
					t.Fatalf("close code %d, want 1001", code)
				}
				rc.write(frame(true, 0, 8, true, p[:2]))
				break
			}
		}
	}
	_ = stuck
	// The stuck client cannot hold shutdown past the context.
	if err := <-shutdown; err == nil {
		t.Fatal("Shutdown reported a clean drain although a client never echoed the close")
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

func TestReadyzIs503WhileDraining(t *testing.T) {
	s := startServer(t, Config{})
	if code := get(t, s.base+"/readyz"); code != 200 {
		t.Fatalf("readyz %d before shutdown", code)
	}
	stuck := joinRaw(t, s, "stuck")
	_ = stuck
	waitUntil(t, "joined", func() bool { return s.hub.Members() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { s.Shutdown(ctx); close(done) }()
	waitUntil(t, "draining", s.draining.Load)
	if code := get(t, s.base+"/readyz"); code != 503 {
		t.Fatalf("readyz %d while draining, want 503", code)
	}
	rc := dialRaw(t, s)
	rc.write([]byte(upgradeRequest("/ws")))
	if code := rc.status(); code != 503 {
		t.Fatalf("upgrade while draining got %d, want 503", code)
	}
	cancel()
	<-done
}

func TestHTTPSurface(t *testing.T) {
	s := startServer(t, Config{Origins: []string{"https://chat.example.com"}})
	for _, tc := range []struct {
		path string
		want int
	}{
		{"/", 200}, {"/healthz", 200}, {"/readyz", 200}, {"/metrics", 200},
		{"/nope", 404}, {"/ws", 400}, {"/ws/", 404}, {"/static/app.js", 200},
	} {
		if got := get(t, s.base+tc.path); got != tc.want {
			t.Errorf("GET %s = %d, want %d", tc.path, got, tc.want)
		}
	}
	resp, err := http.Get(s.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("page CSP = %q", csp)
	}
	for _, tc := range []struct {
		origin string
		want   int
	}{
		{"", 101},
		{"Origin: http://127.0.0.1", 101}, // same origin as Host
		{"Origin: https://chat.example.com", 101},
		{"Origin: https://evil.example.net", 403},
		{"Origin: null", 403},
		{"Origin: https://chat.example.com.evil.net", 403},
		{"Origin: https://evilchat.example.com", 403},
		{"Origin: http://127.0.0.1.evil.net", 403},
	} {
		rc := dialRaw(t, s)
		var req string
		if tc.origin == "" {
			req = upgradeRequest("/ws")
		} else {
			req = upgradeRequest("/ws", tc.origin)
		}
		rc.write([]byte(req))
		if got := rc.status(); got != tc.want {
			t.Errorf("%q: status %d, want %d", tc.origin, got, tc.want)
		}
	}
}

func TestMaxConnsRefusesUpgradesWith503(t *testing.T) {
	s := startServer(t, Config{MaxConns: 2})
	a := join(t, s.url, "a")
	join(t, s.url, "b")
	rc := dialRaw(t, s)
	rc.write([]byte(upgradeRequest("/ws")))
	if code := rc.status(); code != 503 {
		t.Fatalf("third client got %d, want 503", code)
	}
	a.send(`{"content":"unaffected"}`)
	a.waitFor(chatMsg{"a", "unaffected"})
}

func TestMetricsExposeTheRequiredSeries(t *testing.T) {
	s := startServer(t, Config{})
	c := join(t, s.url, "m")
	c.send(`{"content":"x"}`)
	c.waitFor(chatMsg{"m", "x"})
	body := scrape(t, s)
	for _, name := range []string{
		"go_goroutines", "gochat_connections 1", "gochat_messages_received_total 2",
		"gochat_deliveries_total 2", "gochat_slow_consumer_disconnects_total 0", "gochat_pool_running",
		"gochat_broadcast_latency_seconds_bucket", "gochat_sent_bytes_total", "process_open_fds",
	} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %q", name)
		}
	}
}

func TestPipelinedFrameAfterHandshakeIsProcessed(t *testing.T) {
	s := startServer(t, Config{})
	control := join(t, s.url, "control")
	rc := dialRaw(t, s)
	// Handshake and join in one TCP write.
	rc.write(append([]byte(upgradeRequest("/ws")), textFrame(`{"username":"eager","content":"first!"}`)...))
	if code := rc.status(); code != 101 {
		t.Fatalf("status %d", code)
	}
	control.waitFor(chatMsg{"eager", "first!"})
}

func get(t testing.TB, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func scrape(t testing.TB, s *testServer) string {
	t.Helper()
	resp, err := http.Get(s.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// gauge reads one unlabelled series from the server's registry.
func gauge(t testing.TB, s *testServer, name string) float64 {
	t.Helper()
	mfs, err := s.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		}
	}
	t.Fatalf("no series %s", name)
	return 0
}
