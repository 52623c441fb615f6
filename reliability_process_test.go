package main

// Process-level proofs of RELIABILITY.md items that an in-process server
// cannot show (server/reliability_test.go has the rest): the real binary
// under a low fd limit (36, 38), a client process killed with SIGKILL in the
// middle of a frame (39), SIGTERM with 10,000 connected clients (44, 45) and
// stuck clients plus a second signal (46).
//
//	go test -count=1 -run Reliability .          # full sizes (10,000 clients)
//	go test -count=1 -short -run Reliability .   # 500 clients

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
	"io"
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

// ---- the binary and its process ------------------------------------------------

var (
	relBuildOnce sync.Once
	relBin       string
	relBuildErr  error
)

// relBinary builds the server once per test binary into tmp/gochat.
func relBinary(t *testing.T) string {
	t.Helper()
	relBuildOnce.Do(func() {
		bin, err := filepath.Abs(filepath.Join("tmp", "gochat"))
		if err != nil {
			relBuildErr = err
			return
		}
		if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
			relBuildErr = err
			return
		}
		out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			relBuildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		relBin = bin
	})
	if relBuildErr != nil {
		t.Fatal(relBuildErr)
	}
	return relBin
}

type relProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	out  *lockedBuffer
	done chan struct{}
	err  error // exit status, valid after done
}

// relStart runs the server on a free loopback port; nofile > 0 lowers its
// RLIMIT_NOFILE first (through sh's ulimit, then exec, so the PID is the
// server's). It waits until /healthz answers and kills the process at the
// end of the test if it still runs.
func relStart(t *testing.T, nofile int, args ...string) *relProc {
	t.Helper()
	bin := relBinary(t)
	for attempt := 0; ; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		full := append([]string{"-addr", addr}, args...)
		p := &relProc{t: t, addr: addr, out: &lockedBuffer{}, done: make(chan struct{})}
		if nofile > 0 {
			p.cmd = exec.Command("sh", append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, nofile), bin}, full...)...)
		} else {
			p.cmd = exec.Command(bin, full...)
		}
		p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { p.err = p.cmd.Wait(); close(p.done) }()
		t.Cleanup(func() {
			select {
			case <-p.done:
			default:
				p.cmd.Process.Kill()
				<-p.done
			}
			if t.Failed() {
				t.Logf("server output:\n%s", p.out)
			}
		})
		if p.waitHealthy(10 * time.Second) {
			return p
		}
		p.cmd.Process.Kill()
		<-p.done
		if attempt == 2 {
			t.Fatalf("server did not become healthy:\n%s", p.out)
		}
	}
}

func (p *relProc) waitHealthy(d time.Duration) bool {
	client := http.Client{Timeout: time.Second}
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return false
		default:
		}
		if resp, err := client.Get("http://" + p.addr + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func (p *relProc) pid() int { return p.cmd.Process.Pid }

// cpu is the server's user+system CPU time from /proc/PID/stat.
func (p *relProc) cpu() time.Duration {
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

// fds returns the server's open fds by kind ("socket", "anon_inode:[eventpoll]", ...).
func (p *relProc) fds() map[string]int {
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

func (p *relProc) nfds() int {
	n := 0
	for _, v := range p.fds() {
		n += v
	}
	return n
}

// metric reads one unlabeled series from /metrics.
func (p *relProc) metric(name string) float64 {
	p.t.Helper()
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + p.addr + "/metrics")
	if err != nil {
		p.t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return v
		}
	}
	p.t.Fatalf("metric %s not found", name)
	return 0
}

func (p *relProc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// wait waits up to d for the process to exit and returns its exit code.
func (p *relProc) wait(d time.Duration) (int, bool) {
	select {
	case <-p.done:
	case <-time.After(d):
		return 0, false
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode(), true
	}
	return 0, true
}

func relEventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ---- raw clients (no goroutine each) --------------------------------------------

type relWS struct {
	nc  net.Conn
	buf []byte // bytes read and not consumed
}

func relUpgradeRequest() []byte {
	var key [16]byte
	rand.Read(key[:])
	return []byte("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + base64.StdEncoding.EncodeToString(key[:]) + "\r\nSec-WebSocket-Version: 13\r\n\r\n")
}

// relFrame is a masked client frame.
func relFrame(op byte, fin bool, payload []byte, declared int) []byte {
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

func relText(s string) []byte { return relFrame(1, true, []byte(s), len(s)) }

// dial connects and sends the upgrade request (plus extra bytes in the same
// write), without waiting for the answer.
func relDial(addr string, extra []byte) (*relWS, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Write(append(relUpgradeRequest(), extra...)); err != nil {
		nc.Close()
		return nil, err
	}
	return &relWS{nc: nc}, nil
}

func (c *relWS) fill(deadline time.Time) error {
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
func (c *relWS) status(deadline time.Time) (int, error) {
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
func (c *relWS) frame(deadline time.Time) (op byte, payload []byte, err error) {
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

// ---- the control client ------------------------------------------------------------

type relChat struct {
	Username string `json:"username"`
	Content  string `json:"content"`
}

// relControl is a coder/websocket client whose reader always runs.
type relControl struct {
	t    *testing.T
	c    *websocket.Conn
	msgs chan relChat
	done chan struct{}
	mu   sync.Mutex
	hist []relChat
	n    int
}

func relJoinControl(t *testing.T, addr, name string) *relControl {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	k := &relControl{t: t, c: c, msgs: make(chan relChat, 1<<16), done: make(chan struct{})}
	go func() {
		defer close(k.done)
		defer close(k.msgs)
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				return
			}
			var m relChat
			json.Unmarshal(b, &m)
			k.mu.Lock()
			k.hist = append(k.hist, m)
			k.mu.Unlock()
			k.msgs <- m
		}
	}()
	t.Cleanup(func() { c.CloseNow(); <-k.done })
	k.send(fmt.Sprintf(`{"username":%q}`, name))
	k.until(relChat{"System", name + " joined the chat"})
	return k
}

func (k *relControl) send(s string) {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := k.c.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		k.t.Fatal(err)
	}
}

func (k *relControl) until(want relChat) {
	k.t.Helper()
	timer := time.NewTimer(20 * time.Second)
	defer timer.Stop()
	for {
		select {
		case m, ok := <-k.msgs:
			if !ok {
				k.t.Fatalf("control connection ended before %+v", want)
			}
			if m == want {
				return
			}
		case <-timer.C:
			k.t.Fatalf("control: no %+v", want)
		}
	}
}

// marker proves the control still receives chat messages.
func (k *relControl) marker() {
	k.t.Helper()
	k.n++
	content := fmt.Sprintf("marker %d", k.n)
	k.send(fmt.Sprintf(`{"content":%q}`, content))
	k.until(relChat{"control", content})
}

func (k *relControl) history() []relChat {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]relChat(nil), k.hist...)
}

// ---- the tests -----------------------------------------------------------------------

func TestReliabilityProcess(t *testing.T) {
	t.Run("36_accept_emfile_backoff", func(t *testing.T) { relFDExhaustion(t, true) })
	t.Run("38_fd_limit_refuses_cleanly", func(t *testing.T) { relFDExhaustion(t, false) })
	t.Run("39_client_killed_mid_frame", relKillMidFrame)
	t.Run("44_sigterm_many_clients", relSIGTERM)
	t.Run("46_stuck_clients_and_second_signal", relStuck)
}

// relFDExhaustion runs the server with RLIMIT_NOFILE 64 and opens
// connections until it stops accepting. backoff selects the item-36 checks
// (no busy loop while out of fds, resumes by itself); otherwise the item-38
// checks (refuses near the limit, never crashes, keeps its own fds).
func relFDExhaustion(t *testing.T, backoff bool) {
	const limit = 64
	p := relStart(t, limit, "-log-level", "error")
	ctl := relJoinControl(t, p.addr, "control")
	before := p.fds()
	var open []*relWS
	defer func() {
		for _, c := range open {
			c.nc.Close()
		}
	}()
	var refused *relWS
	var refusedCode int
	for i := 0; i < 2*limit && refused == nil; i++ {
		c, err := relDial(p.addr, nil)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		code, err := c.status(time.Now().Add(time.Second))
		switch {
		case code == 101:
			open = append(open, c)
		default: // no answer (left in the backlog), an error status, or closed
			t.Logf("connection %d refused: status %d, %v", i+1, code, err)
			refused, refusedCode = c, code
		}
	}
	if refused == nil {
		t.Fatalf("%d connections accepted under ulimit -n %d", len(open), limit)
	}
	defer refused.nc.Close()
	if refusedCode != 503 {
		// The server keeps a reserve fd to answer a client past the limit,
		// rather than leave it hanging in the listen queue.
		t.Errorf("client past the fd limit got status %d, want a clean 503", refusedCode)
	}
	t.Logf("ulimit -n %d: %d WebSocket clients accepted (plus the control), then refused; server fds %v", limit, len(open), p.fds())
	if len(open) < limit-16 {
		t.Errorf("only %d connections under ulimit -n %d: refused far from the limit", len(open), limit)
	}
	// Out of fds with a connection waiting in the backlog: the listener stays
	// readable, yet the server must not spin (a one-second measuring window).
	cpu0 := p.cpu()
	time.Sleep(time.Second)
	cpu := p.cpu() - cpu0
	t.Logf("server CPU while out of fds: %v per second", cpu)
	if backoff && cpu > 200*time.Millisecond {
		t.Errorf("server used %v CPU in 1 s while out of fds: busy loop", cpu)
	}
	if _, exited := p.wait(0); exited {
		t.Fatalf("server died at the fd limit:\n%s", p.out)
	}
	// Free some fds: it resumes by itself.
	refused.nc.Close()
	for _, c := range open[:10] {
		c.nc.Close()
	}
	open = open[10:]
	t0 := time.Now()
	var again *relWS
	relEventually(t, 10*time.Second, "a new connection accepted after fds were freed", func() bool {
		c, err := relDial(p.addr, nil)
		if err != nil {
			return false
		}
		if code, _ := c.status(time.Now().Add(2 * time.Second)); code != 101 {
			c.nc.Close()
			return false
		}
		again = c
		return true
	})
	open = append(open, again)
	t.Logf("accepting again %v after fds were freed", time.Since(t0))
	if backoff && time.Since(t0) > 3*time.Second {
		t.Errorf("resumed only after %v (backoff is capped at 1 s)", time.Since(t0))
	}
	ctl.marker()
	for _, c := range open {
		c.nc.Close()
	}
	open = nil
	if backoff {
		if got := p.metric("gochat_accept_errors_total"); got == 0 {
			t.Error("accept errors (EMFILE) not counted")
		}
	} else {
		// The server kept every one of its own fds (epoll, eventfd, pipes,
		// listener): only client sockets came and went.
		relEventually(t, 10*time.Second, "server fds back to before", func() bool {
			now := p.fds()
			for kind, n := range before {
				if now[kind] != n {
					return false
				}
			}
			return len(now) == len(before)
		})
	}
	ctl.marker()
	p.signal(syscall.SIGTERM)
	if code, ok := p.wait(10 * time.Second); !ok || code != 0 {
		t.Errorf("exit %d (exited %v) after SIGTERM", code, ok)
	}
}

const relHelperEnv = "GOCHAT_RELIABILITY_HELPER_ADDR"

// TestReliabilityHelperClient is not a test: relKillMidFrame runs the test
// binary again with this one selected, as a client process to SIGKILL.
func TestReliabilityHelperClient(t *testing.T) {
	addr := os.Getenv(relHelperEnv)
	if addr == "" {
		t.Skip("helper process for TestReliabilityProcess/39")
	}
	c, err := relDial(addr, relText(`{"username":"doomed"}`))
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	deadline := time.Now().Add(10 * time.Second)
	if code, err := c.status(deadline); code != 101 {
		fmt.Println("ERROR status", code, err)
		os.Exit(2)
	}
	for {
		op, p, err := c.frame(deadline)
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(2)
		}
		if op == 1 && string(p) == `{"username":"System","content":"doomed joined the chat"}` {
			break
		}
	}
	// Half a frame: the header announces 200 bytes, 100 follow.
	msg := `{"content":"SECRET ` + strings.Repeat("s", 200) + `"}`
	f := relFrame(1, true, []byte(msg)[:100], 200)
	c.nc.Write(f)
	fmt.Println("READY")
	time.Sleep(time.Minute) // until SIGKILL
	os.Exit(3)
}

func relKillMidFrame(t *testing.T) {
	p := relStart(t, 0, "-log-level", "error")
	ctl := relJoinControl(t, p.addr, "control")
	ctl.marker()
	fds := p.nfds()
	cmd := exec.Command(os.Args[0], "-test.run=^TestReliabilityHelperClient$", "-test.count=1")
	cmd.Env = append(os.Environ(), relHelperEnv+"="+p.addr)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if line := sc.Text(); line == "READY" || strings.HasPrefix(line, "ERROR") {
				ready <- line
				break
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-ready:
		if line != "READY" {
			t.Fatalf("helper client: %s", line)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("helper client never got ready")
	}
	ctl.until(relChat{"System", "doomed joined the chat"})
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	ctl.until(relChat{"System", "doomed left the chat"})
	relEventually(t, 10*time.Second, "server fds released", func() bool { return p.nfds() <= fds })
	ctl.marker()
	left := 0
	for _, m := range ctl.history() {
		if strings.Contains(m.Content, "SECRET") {
			t.Errorf("partial message broadcast: %.40q", m.Content)
		}
		if m == (relChat{"System", "doomed left the chat"}) {
			left++
		}
	}
	if left != 1 {
		t.Errorf("leave notice %d times, want once", left)
	}
	// The name is free again.
	relJoinControl(t, p.addr, "doomed")
}

func relSIGTERM(t *testing.T) {
	n, joined := 10000, 200
	if testing.Short() {
		n, joined = 500, 50
	}
	const shutdownTimeout = 10 * time.Second
	p := relStart(t, 0, "-log-level", "error", "-shutdown-timeout", shutdownTimeout.String(),
		"-join-timeout", "10m", "-max-conns", "50000")
	conns := make([]*relWS, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.nc.Close()
			}
		}
	}()
	t0 := time.Now()
	for i := range conns {
		var extra []byte
		if i < joined {
			extra = relText(fmt.Sprintf(`{"username":"m%d"}`, i))
		}
		c, err := relDial(p.addr, extra)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns[i] = c
	}
	for i, c := range conns {
		if code, err := c.status(time.Now().Add(20 * time.Second)); code != 101 {
			t.Fatalf("client %d: status %d %v", i, code, err)
		}
	}
	relEventually(t, 60*time.Second, "members joined", func() bool { return p.metric("gochat_members") == float64(joined) })
	t.Logf("%d clients connected (%d joined) in %v", n, joined, time.Since(t0))

	// SIGTERM: every client gets 1001 (clients echo it, as real ones do),
	// nobody sees a leave notice, the process exits 0 well inside the
	// shutdown timeout.
	t1 := time.Now()
	p.signal(syscall.SIGTERM)
	codes := make([]int, n)
	notices := make([]int, n)
	var wg sync.WaitGroup
	const readers = 8
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := t1.Add(shutdownTimeout + 10*time.Second)
			for i := r; i < n; i += readers {
				c := conns[i]
				codes[i] = -1
				for {
					op, p, err := c.frame(deadline)
					if err != nil {
						break
					}
					if op == 1 && bytes.Contains(p, []byte("left the chat")) {
						notices[i]++
					}
					if op == 8 && len(p) >= 2 {
						codes[i] = int(binary.BigEndian.Uint16(p))
						c.nc.SetWriteDeadline(time.Now().Add(time.Second))
						c.nc.Write(relFrame(8, true, p[:2], 2))
						break
					}
				}
				c.nc.Close()
			}
		}()
	}
	code, exited := p.wait(shutdownTimeout + 5*time.Second)
	took := time.Since(t1)
	wg.Wait()
	conns = nil
	t.Logf("SIGTERM with %d clients: exit %d after %v", n, code, took)
	if !exited || code != 0 {
		t.Fatalf("exit %d (exited %v) %v after SIGTERM; want 0 within %v + margin", code, exited, took, shutdownTimeout)
	}
	bad, noticed := 0, 0
	for i := range codes {
		if codes[i] != 1001 {
			if bad < 5 {
				t.Errorf("client %d: close code %d, want 1001", i, codes[i])
			}
			bad++
		}
		noticed += notices[i]
	}
	if bad > 0 {
		t.Errorf("%d of %d clients did not get 1001", bad, n)
	}
	if noticed > 0 {
		t.Errorf("%d leave notices during shutdown", noticed)
	}
}

func relStuck(t *testing.T) {
	// Stuck clients (they never read and never echo the close) cannot delay
	// the exit past -shutdown-timeout.
	for _, second := range []bool{false, true} {
		timeout := time.Second
		if second {
			timeout = time.Minute
		}
		p := relStart(t, 0, "-log-level", "error", "-shutdown-timeout", timeout.String())
		var stuck []net.Conn
		for i := range 20 {
			c, err := relDial(p.addr, relText(fmt.Sprintf(`{"username":"stuck%d"}`, i)))
			if err != nil {
				t.Fatal(err)
			}
			stuck = append(stuck, c.nc)
		}
		half, err := net.Dial("tcp", p.addr) // half a handshake
		if err != nil {
			t.Fatal(err)
		}
		half.Write([]byte("GET /ws HTTP/1.1\r\n"))
		stuck = append(stuck, half)
		relEventually(t, 10*time.Second, "stuck clients joined", func() bool { return p.metric("gochat_members") == 20 })
		t0 := time.Now()
		p.signal(syscall.SIGTERM)
		if !second {
			code, exited := p.wait(timeout + 3*time.Second)
			t.Logf("stuck clients, -shutdown-timeout %v: exit %d after %v", timeout, code, time.Since(t0))
			if !exited || code != 0 {
				t.Errorf("exit %d (exited %v) after %v, want 0 within %v + margin", code, exited, time.Since(t0), timeout)
			}
		} else {
			// Draining (readyz 503, upgrades refused); a second signal exits at once.
			client := http.Client{Timeout: time.Second}
			relEventually(t, 5*time.Second, "readyz 503", func() bool {
				resp, err := client.Get("http://" + p.addr + "/readyz")
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == 503
			})
			if c, err := relDial(p.addr, nil); err == nil {
				if code, _ := c.status(time.Now().Add(5 * time.Second)); code == 101 {
					t.Error("upgraded while draining")
				}
				c.nc.Close()
			}
			t1 := time.Now()
			p.signal(syscall.SIGTERM)
			code, exited := p.wait(time.Second)
			t.Logf("second signal: exit %d after %v", code, time.Since(t1))
			if !exited {
				t.Errorf("second signal did not exit at once")
			}
		}
		for _, c := range stuck {
			c.Close()
		}
	}
}
