package server

// Shared machinery of TestReliability (reliability_test.go): a rig per
// subtest (server + healthy control client + resource baselines), a control
// client that always reads (so it answers pings), raw clients and small
// measuring helpers.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// rigOpts are the less common knobs of a rig.
type rigOpts struct {
	log  *slog.Logger // server logger; nil discards
	hook func([]byte) // Server.testHookMessage, set before Serve
}

// rig is one subtest's world: a fresh server, a healthy control client that
// must keep receiving, and the fd/goroutine baselines the attack must return
// to.
type rig struct {
	t       *testing.T
	s       *testServer
	ctl     *ctrl
	fds0    int // before the server started
	gos0    int
	fds     int // with the server and the control client up
	gos     int
	closers []func()
}

func newRig(t *testing.T, cfg Config) *rig { return newRigOpts(t, cfg, rigOpts{}) }

func newRigOpts(t *testing.T, cfg Config, o rigOpts) *rig {
	t.Helper()
	r := &rig{t: t, fds0: fdCount(t), gos0: runtime.NumGoroutine()}
	r.s = startServerOpts(t, cfg, o)
	r.ctl = newCtrl(t, r.s.url, "control")
	r.ctl.resetHistory()
	r.fds = fdCount(t)
	r.gos = runtime.NumGoroutine()
	return r
}

// startServerOpts is startServer with a logger and a message hook, both set
// before the server serves anything.
func startServerOpts(t testing.TB, cfg Config, o rigOpts) *testServer {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	s, err := New(cfg, o.log)
	if err != nil {
		t.Fatal(err)
	}
	s.testHookMessage = o.hook
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	addr := s.Addr().String()
	return &testServer{Server: s, url: "ws://" + addr + "/ws", base: "http://" + addr}
}

// onFinish registers a closer for something the attack opened; finish runs
// them before it checks the baselines.
func (r *rig) onFinish(f func()) { r.closers = append(r.closers, f) }

func (r *rig) closeAll() {
	for _, f := range r.closers {
		f()
	}
	r.closers = nil
}

// finish proves the control client still receives a chat message after the
// attack, closes what the attack opened, and waits until fds, goroutines and
// the server's connection set are back to the baseline. It returns everything
// the control received since the rig started, up to a final marker sent after
// every teardown, so notices can be counted exactly.
func (r *rig) finish() []chatMsg {
	r.t.Helper()
	r.ctl.marker()
	r.closeAll()
	r.settle(r.fds, r.gos)
	eventually(r.t, 20*time.Second, "only the control client left on the server", func() bool {
		return r.s.nconns.Load() == 1 && r.s.hub.Members() == 1 && r.s.wsConns.Load() == 1
	})
	r.ctl.marker() // every teardown's notice was queued before this
	return r.ctl.history()
}

// settle waits until fds and goroutines are back at (or below) a baseline.
func (r *rig) settle(fds, gos int) {
	r.t.Helper()
	eventually(r.t, 20*time.Second, fmt.Sprintf("fds back to %d", fds), func() bool { return fdCount(r.t) <= fds })
	eventually(r.t, 20*time.Second, fmt.Sprintf("goroutines back to %d", gos), func() bool { return runtime.NumGoroutine() <= gos })
}

// eventually is waitUntil with a chosen deadline and a diagnostic.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s (fds %d, goroutines %d)", d, what, fdCount(t), runtime.NumGoroutine())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// countMsg counts m in msgs.
func countMsg(msgs []chatMsg, m chatMsg) int {
	n := 0
	for _, x := range msgs {
		if x == m {
			n++
		}
	}
	return n
}

// expectLeftOnce checks that each name's leave notice is in msgs exactly once.
func expectLeftOnce(t testing.TB, msgs []chatMsg, names ...string) {
	t.Helper()
	for _, n := range names {
		if got := countMsg(msgs, chatMsg{"System", n + " left the chat"}); got != 1 {
			t.Errorf("control saw %q's leave notice %d times, want exactly once", n, got)
		}
	}
}

// expectNoNotices checks that msgs holds no join or leave notice at all.
func expectNoNotices(t testing.TB, msgs []chatMsg) {
	t.Helper()
	for _, m := range msgs {
		if m.Username == "System" && (strings.HasSuffix(m.Content, " joined the chat") || strings.HasSuffix(m.Content, " left the chat")) {
			t.Errorf("unexpected notice %q", m.Content)
		}
	}
}

func counterValue(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	return d.GetCounter().GetValue()
}

// ---- control client ----------------------------------------------------------

// ctrl is a coder/websocket chat client whose reader runs all the time, so it
// answers the server's pings and never becomes a slow consumer.
type ctrl struct {
	t    testing.TB
	name string
	conn *websocket.Conn
	msgs chan chatMsg
	done chan struct{}
	n    int
	mu   sync.Mutex
	err  error     // what ended the reader
	hist []chatMsg // everything received since resetHistory
}

func newCtrl(t testing.TB, url, name string) *ctrl {
	t.Helper()
	k := dialCtrl(t, url, name)
	k.send(fmt.Sprintf(`{"username":%q}`, name))
	k.marker() // joined (works with presence off too)
	return k
}

func dialCtrl(t testing.TB, url, name string) *ctrl {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c.SetReadLimit(1 << 20)
	k := &ctrl{t: t, name: name, conn: c, msgs: make(chan chatMsg, 1<<16), done: make(chan struct{})}
	go k.loop()
	t.Cleanup(k.close)
	return k
}

func (k *ctrl) loop() {
	defer close(k.done)
	defer close(k.msgs)
	for {
		_, b, err := k.conn.Read(context.Background())
		if err != nil {
			k.mu.Lock()
			k.err = err
			k.mu.Unlock()
			return
		}
		var m chatMsg
		if json.Unmarshal(b, &m) != nil {
			m = chatMsg{"<not JSON>", string(b)}
		}
		k.mu.Lock()
		k.hist = append(k.hist, m)
		k.mu.Unlock()
		k.msgs <- m
	}
}

// history is everything received since the last resetHistory.
func (k *ctrl) history() []chatMsg {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]chatMsg(nil), k.hist...)
}

func (k *ctrl) resetHistory() {
	k.mu.Lock()
	k.hist = nil
	k.mu.Unlock()
}

func (k *ctrl) close() {
	k.conn.CloseNow()
	<-k.done
}

// endErr waits for the reader to end and returns why it ended.
func (k *ctrl) endErr(timeout time.Duration) error {
	select {
	case <-k.done:
	case <-time.After(timeout):
		return errors.New("still open")
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.err
}

func (k *ctrl) trySend(s string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return k.conn.Write(ctx, websocket.MessageText, []byte(s))
}

func (k *ctrl) send(s string) {
	k.t.Helper()
	if err := k.trySend(s); err != nil {
		k.t.Fatalf("%s: write: %v", k.name, err)
	}
}

func (k *ctrl) say(content string) {
	k.t.Helper()
	k.send(fmt.Sprintf(`{"content":%q}`, content))
}

// tryUntil reads until want arrives and returns what came before it.
func (k *ctrl) tryUntil(want chatMsg, timeout time.Duration) ([]chatMsg, error) {
	var seen []chatMsg
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case m, ok := <-k.msgs:
			if !ok {
				return seen, fmt.Errorf("%s: connection ended (%v) before %+v", k.name, k.endErr(0), want)
			}
			if m == want {
				return seen, nil
			}
			seen = append(seen, m)
		case <-timer.C:
			return seen, fmt.Errorf("%s: no %+v within %v (got %d others)", k.name, want, timeout, len(seen))
		}
	}
}

func (k *ctrl) until(want chatMsg, timeout time.Duration) []chatMsg {
	k.t.Helper()
	seen, err := k.tryUntil(want, timeout)
	if err != nil {
		k.t.Fatal(err)
	}
	return seen
}

// untilAll reads until every one of wants arrived (in any order) and
// returns everything read, wants included.
func (k *ctrl) untilAll(wants []chatMsg, timeout time.Duration) []chatMsg {
	k.t.Helper()
	missing := map[chatMsg]bool{}
	for _, w := range wants {
		missing[w] = true
	}
	var seen []chatMsg
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for len(missing) > 0 {
		select {
		case m, ok := <-k.msgs:
			if !ok {
				k.t.Fatalf("%s: connection ended (%v) with %d messages missing", k.name, k.endErr(0), len(missing))
			}
			seen = append(seen, m)
			delete(missing, m)
		case <-timer.C:
			k.t.Fatalf("%s: %d of %d messages missing after %v", k.name, len(missing), len(wants), timeout)
		}
	}
	return seen
}

// isMarker reports whether m is some client's marker.
func isMarker(m chatMsg) bool {
	if len(m.Content) < 2 || m.Content[0] != 'm' || m.Username == "System" {
		return false
	}
	_, err := strconv.Atoi(m.Content[1:])
	return err == nil
}

// marker sends a unique chat message, waits until it comes back, and returns
// everything received before it: proof that this client still receives.
func (k *ctrl) marker() []chatMsg {
	k.t.Helper()
	k.n++
	content := fmt.Sprintf("m%d", k.n) // short: fits any content limit
	k.say(content)
	return k.until(chatMsg{k.name, content}, 15*time.Second)
}

// ---- raw clients ---------------------------------------------------------------

// dialRaw opens a raw client the rig closes at finish.
func (r *rig) dialRaw() *rawConn {
	r.t.Helper()
	rc := dialRaw(r.t, r.s)
	r.onFinish(func() { rc.nc.Close() })
	return rc
}

// dialRawSmall is dialRaw with a tiny receive buffer (set before connect, so
// the advertised window stays small): a client that reads slowly or never.
func (r *rig) dialRawSmall() *rawConn {
	r.t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}}
	nc, err := d.Dial("tcp", r.s.Addr().String())
	if err != nil {
		r.t.Fatal(err)
	}
	r.onFinish(func() { nc.Close() })
	return &rawConn{t: r.t, nc: nc, br: bufio.NewReader(nc)}
}

func (r *rig) upgradeRaw() *rawConn {
	r.t.Helper()
	rc := r.dialRaw()
	rc.write([]byte(upgradeRequest("/ws")))
	if code := rc.status(); code != 101 {
		r.t.Fatalf("upgrade status %d", code)
	}
	return rc
}

// rawJoin upgrades a raw client, joins as name and reads up to its own join
// notice.
func (r *rig) rawJoin(name string) *rawConn {
	r.t.Helper()
	return r.joinOn(r.dialRaw(), name)
}

func (r *rig) joinOn(rc *rawConn, name string) *rawConn {
	r.t.Helper()
	rc.write([]byte(upgradeRequest("/ws")))
	if code := rc.status(); code != 101 {
		r.t.Fatalf("upgrade status %d", code)
	}
	rc.write(textFrame(fmt.Sprintf(`{"username":%q}`, name)))
	rc.waitText(fmt.Sprintf(`{"username":"System","content":"%s joined the chat"}`, name))
	return rc
}

// waitText reads frames until a text frame equal to want.
func (rc *rawConn) waitText(want string) {
	rc.t.Helper()
	for {
		op, p, err := rc.readFrame(10 * time.Second)
		if err != nil {
			rc.t.Fatalf("waiting for %s: %v", want, err)
		}
		if op == 1 && string(p) == want {
			return
		}
	}
}

// response reads an HTTP response head (and body) from a raw client.
func (rc *rawConn) response() (*http.Response, error) {
	rc.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 101 {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, nil
}

// closeEOF reports whether the server ended the TCP connection (EOF or reset)
// rather than leaving it open.
func (rc *rawConn) closedByServer(timeout time.Duration) bool {
	rc.nc.SetReadDeadline(time.Now().Add(timeout))
	_, err := io.Copy(io.Discard, rc.br)
	return err == nil || isClosedErr(err)
}

// resetClose drops the connection with an RST instead of a FIN.
func resetClose(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	nc.Close()
}

// ---- client-side measurements --------------------------------------------------

// totalAlloc is the bytes this process has allocated on the heap so far.
func totalAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// cpuTime is the CPU time (user+system) this process has used.
func cpuTime(t testing.TB) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the parenthesised command: state is field 3; utime and
	// stime are fields 14 and 15, in clock ticks (100 Hz on Linux).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// maxPendingOut is the largest user-space output backlog of any connection.
func maxPendingOut(s *Server) int {
	most := 0
	s.conns.each(func(c *Conn) {
		c.wmu.Lock()
		most = max(most, len(c.out))
		c.wmu.Unlock()
	})
	return most
}

// shrinkServerSendBuffer gives the server's end of rc a tiny send buffer, so
// a client that does not read backs output up in user space at once (a
// constrained link) instead of after megabytes of kernel buffering.
func (r *rig) shrinkServerSendBuffer(rc *rawConn) {
	r.t.Helper()
	port := rc.nc.LocalAddr().(*net.TCPAddr).Port
	found := false
	r.s.conns.each(func(c *Conn) {
		if sa, err := syscall.Getpeername(int(c.fd)); err == nil {
			if in, ok := sa.(*syscall.SockaddrInet4); ok && in.Port == port {
				found = syscall.SetsockoptInt(int(c.fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096) == nil
			}
		}
	})
	if !found {
		r.t.Fatalf("no server connection for client port %d", port)
	}
}

func recvDontWait(fd int, buf []byte) (int, syscall.Sockaddr, error) {
	return syscall.Recvfrom(fd, buf, syscall.MSG_DONTWAIT)
}

// lockedBuf is a goroutine-safe log sink.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
