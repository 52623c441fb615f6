package e2e

// The one harness every test here shares: where the repository is, the
// gochat binary (built once per run into a temporary directory), a gochat
// process on a free loopback port, the one polling helper, the /metrics
// reader, and the raw WebSocket client with the one frame builder.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestMain removes the build directory, made only by runs that need the
// binary (not by the helper client process, which is SIGKILLed).
func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// strictTiming is true when tight wall-clock bounds mean something: not
// under -short (quick, often busy developer machines) and not under the race
// detector (every goroutine of the test runs several times slower). Tests
// check such bounds only when it holds, and otherwise keep a generous bound
// that still catches a hang.
func strictTiming() bool { return !testing.Short() && !raceEnabled }

// timingBound is strict when strictTiming holds, else generous.
func timingBound(strict, generous time.Duration) time.Duration {
	if strictTiming() {
		return strict
	}
	return generous
}

// ---- the repository -------------------------------------------------------------

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

// repoRoot is the directory of gochat's go.mod (module gochat): found by
// walking up from the working directory, so the tests do not depend on how
// deep this module sits.
func repoRoot(t testing.TB) string {
	t.Helper()
	rootOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			rootErr = err
			return
		}
		for {
			if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && modulePath(b) == "gochat" {
				rootDir = dir
				return
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				rootErr = errors.New("no go.mod of module gochat above the working directory")
				return
			}
			dir = parent
		}
	})
	if rootErr != nil {
		t.Fatal(rootErr)
	}
	return rootDir
}

// modulePath is the module directive of a go.mod file.
func modulePath(gomod []byte) string {
	for _, line := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

// repoFile is the path of a file at the repository root.
func repoFile(t testing.TB, name string) string {
	t.Helper()
	return filepath.Join(repoRoot(t), name)
}

// ---- the binary ---------------------------------------------------------------------

var (
	buildOnce sync.Once
	buildDir  string // from os.MkdirTemp; TestMain removes it
	binPath   string
	buildErr  error
)

// gochatBinary builds the server once per test run, in the repository's own
// module, into a fresh temporary directory (never into the repository).
func gochatBinary(t testing.TB) string {
	t.Helper()
	root := repoRoot(t)
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gochat-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		buildDir = dir
		bin := filepath.Join(dir, "gochat")
		cmd := exec.Command("go", "build", "-o", bin, ".")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		binPath = bin
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// ---- the process ----------------------------------------------------------------------

// gochatOpts configures startGochat; the zero value runs the binary on a
// free loopback port with default flags.
type gochatOpts struct {
	addr   string     // listen address; empty picks a free loopback port
	nofile int        // > 0 lowers RLIMIT_NOFILE (sh's ulimit, then exec: the PID stays the server's)
	args   []string   // more flags
	owner  *testing.T // whose end kills the process and shows its output on failure; default t
}

// gochatProc is one running gochat binary.
type gochatProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string        // host:port it serves on
	out  *lockedBuffer // stdout and stderr
	done chan struct{} // closed when it has exited
	err  error         // cmd.Wait's result, valid after done
}

// startGochat starts the binary and waits until /healthz answers 200. A
// fixed address is retried until it is free again (right after a restart);
// a free port is picked anew on every attempt.
func startGochat(t *testing.T, o gochatOpts) *gochatProc {
	t.Helper()
	bin := gochatBinary(t)
	owner := o.owner
	if owner == nil {
		owner = t
	}
	const startWait = 30 * time.Second
	deadline := time.Now().Add(startWait)
	for {
		addr := o.addr
		if addr == "" {
			addr = freeLoopbackAddr(t)
		}
		p := &gochatProc{t: t, addr: addr, out: &lockedBuffer{}, done: make(chan struct{})}
		full := append([]string{"-addr", addr}, o.args...)
		if o.nofile > 0 {
			p.cmd = exec.Command("sh", append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, o.nofile), bin}, full...)...)
		} else {
			p.cmd = exec.Command(bin, full...)
		}
		p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { p.err = p.cmd.Wait(); close(p.done) }()
		healthy := poll(time.Until(deadline), func() bool {
			select {
			case <-p.done:
				return true // exited: try again
			default:
			}
			return p.healthy()
		})
		if healthy && !p.exited() {
			owner.Cleanup(func() {
				p.kill()
				if owner.Failed() {
					owner.Logf("gochat on %s (%s) output:\n%s", p.addr, p.status(), p.out)
				}
			})
			return p
		}
		p.kill()
		if time.Now().After(deadline) {
			t.Fatalf("gochat on %s did not become healthy within %v (%s):\n%s", addr, startWait, p.status(), p.out)
		}
		time.Sleep(100 * time.Millisecond) // the port may still be in use
	}
}

func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func (p *gochatProc) healthy() bool {
	client := http.Client{Timeout: time.Second}
	resp, err := client.Get("http://" + p.addr + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (p *gochatProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *gochatProc) kill() {
	if !p.exited() {
		p.cmd.Process.Kill()
		<-p.done
	}
}

// status describes how the process ended ("running" while it runs).
func (p *gochatProc) status() string {
	if !p.exited() {
		return "running"
	}
	if p.err == nil {
		return "exit status 0"
	}
	return p.err.Error()
}

func (p *gochatProc) pid() int { return p.cmd.Process.Pid }

func (p *gochatProc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// wait waits up to d for the process to exit and returns its exit code
// (-1 when a signal ended it).
func (p *gochatProc) wait(d time.Duration) (code int, exited bool) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		return 0, false
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode(), true
	}
	return 0, true
}

// stopWait bounds how long stop waits for an exit: a hang bound only.
const stopWait = 30 * time.Second

// stop sends sig and waits for the exit (SIGKILL, and an error, after
// stopWait); it returns the exit status.
func (p *gochatProc) stop(t *testing.T, sig syscall.Signal) string {
	t.Helper()
	if p.exited() {
		return p.status()
	}
	_ = p.cmd.Process.Signal(sig)
	if _, ok := p.wait(stopWait); !ok {
		t.Errorf("gochat did not exit within %v of %v; killing it", stopWait, sig)
		p.kill()
	}
	return p.status()
}

// cpu is the process's user+system CPU time from /proc/PID/stat.
func (p *gochatProc) cpu() time.Duration {
	p.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid()))
	if err != nil {
		p.t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * 10 * time.Millisecond // 100 Hz clock ticks
}

// fds returns the process's open fds by kind ("socket", "pipe", "anon_inode:[eventpoll]", ...).
func (p *gochatProc) fds() map[string]int {
	p.t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", p.pid())
	ents, err := os.ReadDir(dir)
	if err != nil {
		p.t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if strings.HasPrefix(target, "socket:") {
			target = "socket"
		} else if strings.HasPrefix(target, "pipe:") {
			target = "pipe"
		}
		kinds[target]++
	}
	return kinds
}

func (p *gochatProc) nfds() int {
	n := 0
	for _, v := range p.fds() {
		n += v
	}
	return n
}

// metric reads one unlabeled series from the process's /metrics.
func (p *gochatProc) metric(name string) float64 {
	p.t.Helper()
	return metric(p.t, "http://"+p.addr, name)
}

// lockedBuffer collects a process's output; safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// ---- polling and metrics ---------------------------------------------------------------

// poll evaluates cond every 10 ms until it holds (true) or d has passed
// (false). Tests wait on observable conditions with it, never for a fixed time.
func poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// eventually fails the test unless cond holds within d.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(d, cond) {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// scrape reads every series of base's /metrics.
func scrape(t testing.TB, base string) (map[string]float64, error) {
	t.Helper()
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	series := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		// A labeled series is keyed by its whole name, labels included:
		// gochat_cluster_dropped_total{reason="invalid"}.
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		name, v, ok := line[:i], line[i+1:], true
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			series[name] = f
		}
	}
	return series, sc.Err()
}

// metric reads one unlabeled series from base's /metrics.
func metric(t testing.TB, base, name string) float64 {
	t.Helper()
	series, err := scrape(t, base)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	v, ok := series[name]
	if !ok {
		t.Fatalf("metric %s not found", name)
	}
	return v
}

// ---- raw WebSocket client (no goroutine each) --------------------------------------------

// rawWS is a hand-made WebSocket client for what a library will not do:
// thousands of clients without a goroutine each, half frames, no close echo.
type rawWS struct {
	nc  net.Conn
	buf []byte // bytes read and not consumed
}

func upgradeRequest() []byte {
	var key [16]byte
	rand.Read(key[:])
	return []byte("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + base64.StdEncoding.EncodeToString(key[:]) + "\r\nSec-WebSocket-Version: 13\r\n\r\n")
}

// clientFrame is a masked client frame whose header announces declared
// payload bytes (len(payload) for a whole frame, more for half a frame).
func clientFrame(op byte, fin bool, payload []byte, declared int) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	switch n := declared; {
	case n <= 125:
		out = append(out, 0x80|byte(n))
	case n <= 0xffff:
		out = append(out, 0x80|126, byte(n>>8), byte(n))
	default:
		out = append(out, 0x80|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	key := [4]byte{0xa1, 0xb2, 0xc3, 0xd4}
	out = append(out, key[:]...)
	for i, c := range payload {
		out = append(out, c^key[i%4])
	}
	return out
}

// textFrame is a whole masked text frame.
func textFrame(s string) []byte { return clientFrame(1, true, []byte(s), len(s)) }

// dialRaw connects and sends the upgrade request (plus extra bytes in the
// same write), without waiting for the answer.
func dialRaw(addr string, extra []byte) (*rawWS, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Write(append(upgradeRequest(), extra...)); err != nil {
		nc.Close()
		return nil, err
	}
	return &rawWS{nc: nc}, nil
}

func (c *rawWS) fill(deadline time.Time) error {
	c.nc.SetReadDeadline(deadline)
	var tmp [4096]byte
	n, err := c.nc.Read(tmp[:])
	c.buf = append(c.buf, tmp[:n]...)
	if n > 0 {
		return nil
	}
	return err
}

// status reads the HTTP response head and returns its status code.
func (c *rawWS) status(deadline time.Time) (int, error) {
	for {
		if i := bytes.Index(c.buf, []byte("\r\n\r\n")); i >= 0 {
			head := string(c.buf[:i])
			c.buf = c.buf[i+4:]
			f := strings.Fields(head)
			if len(f) < 2 {
				return 0, fmt.Errorf("bad response %q", head)
			}
			return strconv.Atoi(f[1])
		}
		if err := c.fill(deadline); err != nil {
			return 0, err
		}
	}
}

// frame reads one server frame.
func (c *rawWS) frame(deadline time.Time) (op byte, payload []byte, err error) {
	for {
		if len(c.buf) >= 2 {
			n, hl := int(c.buf[1]&0x7f), 2
			switch n {
			case 126:
				hl = 4
			case 127:
				hl = 10
			}
			if len(c.buf) >= hl {
				switch n {
				case 126:
					n = int(binary.BigEndian.Uint16(c.buf[2:]))
				case 127:
					n = int(binary.BigEndian.Uint64(c.buf[2:]))
				}
				if len(c.buf) >= hl+n {
					op, payload = c.buf[0]&0x0f, append([]byte(nil), c.buf[hl:hl+n]...)
					c.buf = c.buf[hl+n:]
					return op, payload, nil
				}
			}
		}
		if err := c.fill(deadline); err != nil {
			return 0, nil, err
		}
	}
}

// ---- chat client on coder/websocket ------------------------------------------------------

// chatMsg is a server message.
type chatMsg struct {
	Username string `json:"username"`
	Content  string `json:"content"`
}

// chatWait bounds any one wait for a chat message: a hang bound only.
const chatWait = 20 * time.Second

// wsClient is a client on github.com/coder/websocket, an independent
// implementation of RFC 6455, that decodes each server message into a T
// (chatMsg: the seed's two keys; v2Msg: gochat.v2). Its reader always runs,
// so it never stalls the server however the test reads; every message is
// kept in its history.
type wsClient[T any] struct {
	t    testing.TB
	name string
	c    *websocket.Conn
	msgs chan T
	done chan struct{}
	mu   sync.Mutex
	hist []T
}

// dial connects k to a ws:// URL (opts may be nil) and starts its reader;
// bad makes the T of a message that is not JSON.
func (k *wsClient[T]) dial(t testing.TB, url string, opts *websocket.DialOptions, bad func(b []byte) T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c.SetReadLimit(1 << 20)
	k.t, k.c, k.msgs, k.done = t, c, make(chan T, 1<<16), make(chan struct{})
	go func() {
		defer close(k.done)
		defer close(k.msgs)
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				return
			}
			var m T
			if err := json.Unmarshal(b, &m); err != nil {
				m = bad(b)
			}
			k.mu.Lock()
			k.hist = append(k.hist, m)
			k.mu.Unlock()
			k.msgs <- m
		}
	}()
	t.Cleanup(func() { c.CloseNow(); <-k.done })
}

func (k *wsClient[T]) send(s string) {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := k.c.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		k.t.Fatalf("%s: write: %v", k.name, err)
	}
}

// next returns the next message.
func (k *wsClient[T]) next() T {
	k.t.Helper()
	timer := time.NewTimer(chatWait)
	defer timer.Stop()
	select {
	case m, ok := <-k.msgs:
		if !ok {
			k.t.Fatalf("%s: connection ended while waiting for a message", k.name)
		}
		return m
	case <-timer.C:
		k.t.Fatalf("%s: no message within %v", k.name, chatWait)
	}
	var zero T
	return zero
}

// history is every message received so far.
func (k *wsClient[T]) history() []T {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]T(nil), k.hist...)
}

// chatClient speaks the seed protocol.
type chatClient struct {
	wsClient[chatMsg]
	n int // markers sent
}

// dialChat connects to a ws:// URL without joining.
func dialChat(t testing.TB, url string) *chatClient {
	t.Helper()
	k := &chatClient{}
	k.dial(t, url, nil, func(b []byte) chatMsg { return chatMsg{"(bad server JSON)", string(b)} })
	return k
}

// joinChat dials url, joins as name and waits for its own join notice.
func joinChat(t testing.TB, url, name string) *chatClient {
	t.Helper()
	k := dialChat(t, url)
	k.name = name
	k.send(fmt.Sprintf(`{"username":%q}`, name))
	k.waitFor(chatMsg{"System", name + " joined the chat"})
	return k
}

// nextIs requires the next message to be want: nothing (no duplicate, no
// stray notice) may come in between.
func (k *chatClient) nextIs(want chatMsg) {
	k.t.Helper()
	if got := k.next(); got != want {
		k.t.Fatalf("%s: got %+v, want %+v", k.name, got, want)
	}
}

// waitFor reads until want arrives; other traffic may come first.
func (k *chatClient) waitFor(want chatMsg) {
	k.t.Helper()
	timer := time.NewTimer(chatWait)
	defer timer.Stop()
	for {
		select {
		case m, ok := <-k.msgs:
			if !ok {
				k.t.Fatalf("%s: connection ended before %+v", k.name, want)
			}
			if m == want {
				return
			}
		case <-timer.C:
			k.t.Fatalf("%s: no %+v within %v", k.name, want, chatWait)
		}
	}
}

// marker proves the client still receives chat messages: it sends a fresh
// marker and waits for it to come back.
func (k *chatClient) marker() {
	k.t.Helper()
	k.n++
	content := fmt.Sprintf("marker %d", k.n)
	k.send(fmt.Sprintf(`{"content":%q}`, content))
	k.waitFor(chatMsg{k.name, content})
}
