package server

import (
	"bufio"
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
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// ants starts its package-level default pool at init; ours must all end.
	goleak.VerifyTestMain(m, goleak.IgnoreCurrent())
}

// testServer is an in-process gochat on 127.0.0.1:0.
type testServer struct {
	*Server
	url  string // ws://127.0.0.1:PORT/ws
	base string // http://127.0.0.1:PORT
}

// startServer starts a server with cfg (zero fields default; Addr is forced
// to a free loopback port) and shuts it down when the test ends.
func startServer(t testing.TB, cfg Config) *testServer {
	t.Helper()
	return startServerOpts(t, cfg, rigOpts{})
}

// chatMsg is a server message.
type chatMsg struct {
	Username string `json:"username"`
	Content  string `json:"content"`
}

// client is a chat client on github.com/coder/websocket, an independent
// implementation of RFC 6455.
type client struct {
	t    testing.TB
	conn *websocket.Conn
}

func dial(t testing.TB, url string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c.SetReadLimit(1 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return &client{t: t, conn: c}
}

// join dials and joins as name, and waits for its own join notice.
func join(t testing.TB, url, name string) *client {
	t.Helper()
	c := dial(t, url)
	c.send(fmt.Sprintf(`{"username":%q}`, name))
	c.waitFor(chatMsg{"System", name + " joined the chat"})
	return c
}

func (c *client) send(s string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// readRaw returns the next message's bytes, or the error that ended the
// connection (a websocket.CloseError for a close frame).
func (c *client) readRaw(timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, b, err := c.conn.Read(ctx)
	return b, err
}

func (c *client) read() chatMsg {
	c.t.Helper()
	b, err := c.readRaw(5 * time.Second)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var m chatMsg
	if err := json.Unmarshal(b, &m); err != nil {
		c.t.Fatalf("bad server JSON %q: %v", b, err)
	}
	return m
}

// waitFor reads until want arrives, failing on anything unexpected is not
// required: other traffic (notices) may come first.
func (c *client) waitFor(want chatMsg) {
	c.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if m := c.read(); m == want {
			return
		}
	}
	c.t.Fatalf("did not receive %+v", want)
}

// expectClose reads until the server closes and checks the close code.
func (c *client) expectClose(code websocket.StatusCode) {
	c.t.Helper()
	for {
		_, err := c.readRaw(5 * time.Second)
		if err == nil {
			continue
		}
		if got := websocket.CloseStatus(err); got != code {
			c.t.Fatalf("close: got %v (%v), want %v", got, err, code)
		}
		return
	}
}

// rawConn is a hand-driven TCP client for what libraries refuse to send.
type rawConn struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, s *testServer) *rawConn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", s.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func upgradeRequest(path string, extra ...string) string {
	var key [16]byte
	rand.Read(key[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + base64.StdEncoding.EncodeToString(key[:]) + "\r\nSec-WebSocket-Version: 13\r\n"
	for _, h := range extra {
		req += h + "\r\n"
	}
	return req + "\r\n"
}

// upgradeRaw dials and completes the handshake by hand.
func upgradeRaw(t testing.TB, s *testServer) *rawConn {
	t.Helper()
	rc := dialRaw(t, s)
	rc.write([]byte(upgradeRequest("/ws")))
	if code := rc.status(); code != 101 {
		t.Fatalf("upgrade status %d", code)
	}
	return rc
}

func (rc *rawConn) write(b []byte) {
	rc.t.Helper()
	rc.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := rc.nc.Write(b); err != nil {
		rc.t.Fatalf("raw write: %v", err)
	}
}

// status reads an HTTP response head and returns its status code.
func (rc *rawConn) status() int {
	rc.t.Helper()
	rc.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		rc.t.Fatalf("read response: %v", err)
	}
	if resp.StatusCode != 101 {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp.StatusCode
}

// frame builds a client frame by hand: any opcode, RSV bits, mask or not.
func frame(fin bool, rsv byte, op byte, masked bool, payload []byte) []byte {
	b0 := op | rsv<<4
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	var m byte
	if masked {
		m = 0x80
	}
	switch n := len(payload); {
	case n <= 125:
		out = append(out, m|byte(n))
	case n <= 0xffff:
		out = append(out, m|126, byte(n>>8), byte(n))
	default:
		out = append(out, m|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	if !masked {
		return append(out, payload...)
	}
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	out = append(out, key[:]...)
	for i, c := range payload {
		out = append(out, c^key[i%4])
	}
	return out
}

func textFrame(s string) []byte { return frame(true, 0, 1, true, []byte(s)) }

// readFrame reads one server frame (never masked).
func (rc *rawConn) readFrame(timeout time.Duration) (op byte, payload []byte, err error) {
	rc.nc.SetReadDeadline(time.Now().Add(timeout))
	var h [2]byte
	if _, err = io.ReadFull(rc.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err = io.ReadFull(rc.br, l[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err = io.ReadFull(rc.br, l[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(l[:])
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(rc.br, payload)
	return h[0] & 0x0f, payload, err
}

// readClose reads frames until a close frame and returns its code
// (1005 for an empty one), or -1 if the connection ended without one.
func (rc *rawConn) readClose() int {
	rc.t.Helper()
	for {
		op, p, err := rc.readFrame(5 * time.Second)
		if err != nil {
			return -1
		}
		if op == 8 {
			if len(p) < 2 {
				return 1005
			}
			return int(binary.BigEndian.Uint16(p))
		}
	}
}

// fdCount is the number of open fds of this process.
func fdCount(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// waitUntil polls cond until it holds or the deadline passes; it waits on
// an observable condition, never for a fixed time.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(fmt.Sprint(err), "reset")
}

// timingBound checks a wall-clock or CPU bound (they catch hangs and busy
// loops, not slowness). Under the race detector or -short, where everything
// is several times slower, an exceeded bound is only logged; CI runs the
// reliability suite once without -race as well, where it fails the test.
func timingBound(t testing.TB, exceeded bool, format string, args ...any) {
	t.Helper()
	if !exceeded {
		return
	}
	if raceEnabled || testing.Short() {
		t.Logf("timing bound not enforced under -race/-short: "+format, args...)
		return
	}
	t.Errorf(format, args...)
}

// startUnmanaged starts a server with the default config that the test
// shuts down itself (startServer's cleanup would do it for it); served
// receives Serve's result.
func startUnmanaged(t testing.TB) (*testServer, chan error) {
	t.Helper()
	s, err := New(Config{Addr: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	return &testServer{Server: s, url: "ws://" + s.Addr().String() + "/ws", base: "http://" + s.Addr().String()}, served
}
