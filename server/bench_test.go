package server

import (
	"bytes"
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"gochat/server/internal/chat"
	"gochat/server/internal/chatmsg"
	"gochat/server/internal/wsframe"
)

// newIdleServer is a Server that is bound but not serving: enough for the
// upgrader, the parser and the hub.
func newIdleServer(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	cfg.Addr = "127.0.0.1:0"
	s, err := New(cfg, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		s.pool.Close()
		s.ep.Close()
		s.ln.Close()
	})
	return s
}

var benchHandshake = []byte("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:8080\r\n\r\n")

// BenchmarkUpgrade is the handshake of one WebSocket client on the
// reactor's path: parse, check origin and admission, write the 101.
func BenchmarkUpgrade(b *testing.B) {
	s := newIdleServer(b, Config{})
	b.ReportAllocs()
	for b.Loop() {
		up := upgraders.Get().(*upgrader)
		up.reset(s, benchHandshake)
		if _, err := up.u.Upgrade(up); err != nil {
			b.Fatal(err)
		}
		if !bytes.HasPrefix(up.out, []byte("HTTP/1.1 101")) {
			b.Fatalf("response %q", up.out)
		}
		upgraders.Put(up)
		s.wsConns.Add(-1)
	}
}

// BenchmarkReadChatMessage is a masked client frame carrying a chat message:
// header, unmask, UTF-8 check and JSON decode, as the reactor does it.
func BenchmarkReadChatMessage(b *testing.B) {
	wire := clientFrame(`{"content":"Hello everyone, how is it going today? \u00e9\u00e8"}`)
	data := make([]byte, len(wire))
	scratch := make([]byte, 0, 4096)
	b.ReportAllocs()
	b.SetBytes(int64(len(wire)))
	for b.Loop() {
		copy(data, wire)
		h, ok, violation := wsframe.ParseHeader(data, DefaultMaxMessage)
		if !ok || violation != nil {
			b.Fatal("bad header")
		}
		p := data[h.Size : h.Size+int(h.Length)]
		ws.Cipher(p, h.Mask, 0)
		var u wsframe.UTF8Checker
		if !u.Check(p, true) {
			b.Fatal("utf-8")
		}
		var m chatmsg.Message
		var err error
		m, scratch, err = chatmsg.Parse(p, scratch)
		if err != nil || !m.HasContent {
			b.Fatal(err)
		}
	}
}

func clientFrame(payload string) []byte {
	return frame(true, 0, byte(ws.OpText), true, []byte(payload))
}

// broadcastRig is a hub with n members on socketpairs. The far ends are
// drained between measured stretches (drain), so only the server side's
// cost is in the numbers.
type broadcastRig struct {
	s    *Server
	near []int
	far  []int
	buf  []byte
}

func newBroadcastRig(tb testing.TB, n int) *broadcastRig {
	tb.Helper()
	off := false
	s := newIdleServer(tb, Config{Workers: 2, Presence: &off, RoundInterval: RoundIntervalNone})
	s.hub.SetMaxRest(0) // measure the fan-out itself, not the pacing
	r := &broadcastRig{s: s, buf: make([]byte, 256<<10)}
	now := time.Now().UnixNano()
	for i := range n {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
		if err != nil {
			tb.Fatal(err)
		}
		syscall.SetNonblock(fds[0], true)
		syscall.SetNonblock(fds[1], true)
		c := newConn(s, fds[0], now)
		room, err := s.hub.Acquire([]byte(chatmsg.DefaultRoom))
		if err != nil {
			tb.Fatal(err)
		}
		c.sess.Attach(room, chat.Options{})
		c.phase.Store(uint32(phaseJoining))
		c.sess.OnMessage(fmt.Appendf(nil, `{"username":"m%d"}`, i), now) // the real join path
		if c.getPhase() != phaseJoined {
			tb.Fatalf("member %d did not join", i)
		}
		r.near = append(r.near, fds[0])
		r.far = append(r.far, fds[1])
	}
	tb.Cleanup(func() {
		for _, fd := range r.near {
			syscall.Close(fd)
		}
		for _, fd := range r.far {
			syscall.Close(fd)
		}
	})
	return r
}

// drain empties every member's socket from the far end.
func (r *broadcastRig) drain() {
	for _, fd := range r.far {
		for {
			if n, _ := syscall.Read(fd, r.buf); n <= 0 {
				break
			}
		}
	}
}

// publishAndWait broadcasts one message and waits for its round to end.
func (r *broadcastRig) publishAndWait(content []byte) {
	done := r.s.hub.Rounds()
	if err := r.s.hub.Publish(chatmsg.DefaultRoom, "alice", content); err != nil {
		panic(err)
	}
	for r.s.hub.Rounds() == done {
		runtime.Gosched()
	}
}

// BenchmarkBroadcast is one chat message fanned out to n members: encode
// once, one write per member. allocs/op must not grow with n.
func BenchmarkBroadcast(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			r := newBroadcastRig(b, n)
			content := []byte("Hello everyone, how is it going today?")
			r.publishAndWait(content) // warm buffers
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if i++; i%256 == 0 { // keep socket buffers from filling
					b.StopTimer()
					r.drain()
					b.StartTimer()
				}
				r.publishAndWait(content)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
		})
	}
}

func TestBroadcastAllocationsDoNotGrowWithMembers(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 2,000 socketpairs")
	}
	content := []byte("Hello everyone")
	allocs := map[int]float64{}
	for _, n := range []int{10, 1000} {
		r := newBroadcastRig(t, n)
		for range 2 * DefaultHistory { // past the history ring's warm-up
			r.publishAndWait(content)
		}
		r.drain()
		allocs[n] = testing.AllocsPerRun(50, func() { r.publishAndWait(content) })
		r.drain()
	}
	// A round may allocate a little (timers, pool bookkeeping), but nothing
	// per member: 1,000 members must cost what 10 do.
	if allocs[1000] > allocs[10]+1 {
		t.Fatalf("allocations per broadcast grow with members: %v", allocs)
	}
	t.Logf("allocs per broadcast: %v", allocs)
}
