package server

// RELIABILITY.md, faults (items 39-43).

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ---- Faults -----------------------------------------------------------------------

// blackhole is a TCP proxy that can stop forwarding both ways without
// closing anything: the peer behind it vanishes without a FIN.
type blackhole struct {
	ln     net.Listener
	target string
	hole   atomic.Bool
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func newBlackhole(t *testing.T, target string) *blackhole {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln, target: target}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			b.mu.Lock()
			b.conns = append(b.conns, c, up)
			b.mu.Unlock()
			b.wg.Add(2)
			go b.pipe(c, up)
			go b.pipe(up, c)
		}
	}()
	return b
}

func (b *blackhole) pipe(from, to net.Conn) {
	defer b.wg.Done()
	defer to.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 && !b.hole.Load() {
			to.Write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

func (b *blackhole) close() {
	b.ln.Close()
	b.mu.Lock()
	for _, c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

func rel40HalfOpen(t *testing.T) {
	const interval, pong = 300 * time.Millisecond, 300 * time.Millisecond
	r := newRig(t, Config{PingInterval: interval, PongTimeout: pong})
	bh := newBlackhole(t, r.s.Addr().String())
	r.onFinish(bh.close)
	pongs := counterValue(r.s.metrics.timeouts.WithLabelValues("pong"))
	ghost := dialCtrl(t, "ws://"+bh.ln.Addr().String()+"/ws", "ghost")
	ghost.send(`{"username":"ghost"}`)
	ghost.until(chatMsg{"System", "ghost joined the chat"}, 10*time.Second)
	t0 := time.Now()
	bh.hole.Store(true) // the peer vanishes: no FIN, no RST, no bytes
	r.ctl.until(chatMsg{"System", "ghost left the chat"}, 10*time.Second)
	took := time.Since(t0)
	t.Logf("half-open peer dropped %v after it vanished (interval %v + timeout %v)", took, interval, pong)
	timingBound(t, took > interval+pong+time.Second, "half-open peer dropped after %v, want within %v + slack", took, interval+pong)
	if counterValue(r.s.metrics.timeouts.WithLabelValues("pong")) <= pongs {
		t.Error("not dropped by the keepalive")
	}
	// The name is free again.
	again := newCtrl(t, r.s.url, "ghost")
	again.close()
	ghost.close()
	seen := r.finish()
	if got := countMsg(seen, chatMsg{"System", "ghost left the chat"}); got != 2 {
		t.Errorf("ghost left %d times, want 2 (dropped, then the rejoined one)", got)
	}
}

func rel41ResetDuringBroadcast(t *testing.T) {
	r := newRig(t, Config{Rate: 1e6, Burst: 1 << 30})
	stay := []*ctrl{newCtrl(t, r.s.url, "stay1"), newCtrl(t, r.s.url, "stay2")}
	victims := make([]*rawConn, 3)
	for i := range victims {
		victims[i] = r.joinOn(r.dialRawSmall(), fmt.Sprintf("victim%d", i))
	}
	const total = 600
	content := strings.Repeat("r", 500)
	sent := make(chan error, 1)
	go func() {
		for i := range total {
			if err := r.ctl.trySend(fmt.Sprintf(`{"content":"%04d %s"}`, i, content)); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	// Reset the victims while the broadcasts flow to them.
	stay[0].until(chatMsg{"control", fmt.Sprintf("%04d %s", 100, content)}, 20*time.Second)
	for _, v := range victims {
		resetClose(v.nc)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	// The clients that stay get everything, in order.
	for _, k := range stay {
		for i := range total {
			if i <= 100 && k == stay[0] {
				continue
			}
			k.until(chatMsg{"control", fmt.Sprintf("%04d %s", i, content)}, 20*time.Second)
		}
	}
	for _, k := range stay {
		k.close()
	}
	expectLeftOnce(t, r.finish(), "victim0", "victim1", "victim2", "stay1", "stay2")
}

func rel42Panic(t *testing.T) {
	hook := func(p []byte) {
		if bytes.Contains(p, []byte("PANIC")) {
			panic("injected by the test")
		}
	}
	r := newRigOpts(t, Config{Workers: 1}, rigOpts{hook: hook})
	for _, name := range []string{"crash1", "crash2"} {
		rc := r.rawJoin(name)
		rc.write(textFrame(`{"content":"PANIC please"}`))
		if code := rc.readClose(); code != 1011 {
			t.Errorf("%s: close %d, want 1011", name, code)
		}
	}
	// The only worker survived: a newcomer joins and chats.
	k := newCtrl(t, r.s.url, "after")
	k.say("alive")
	r.ctl.until(chatMsg{"after", "alive"}, 10*time.Second)
	k.close()
	seen := r.finish()
	expectLeftOnce(t, seen, "crash1", "crash2", "after")
	for _, m := range seen {
		if strings.Contains(m.Content, "PANIC") {
			t.Errorf("panicking message broadcast")
		}
	}
	if got := counterValue(r.s.metrics.panics); got != 2 {
		t.Errorf("panics %v, want 2", got)
	}
}

func rel43CloseRace(t *testing.T) {
	for _, withShutdown := range []bool{false, true} {
		t.Run(fmt.Sprintf("shutdown=%v", withShutdown), func(t *testing.T) {
			closeRace(t, withShutdown)
		})
	}
}

// closeRace points every close cause at the same connections at once: a read
// error and a write error (RST), a ping timeout (silent peers, short
// keepalive), slow-consumer eviction (never reading during a flood) and,
// optionally, shutdown. Each connection is cleaned up exactly once.
func closeRace(t *testing.T, withShutdown bool) {
	const n = 12
	r := newRig(t, Config{PingInterval: 150 * time.Millisecond, PongTimeout: 150 * time.Millisecond,
		SendQueue: 4096, Rate: 1e6, Burst: 1 << 30, CloseLinger: 200 * time.Millisecond})
	names := make([]string, n)
	vs := make([]*rawConn, n)
	for i := range vs {
		names[i] = fmt.Sprintf("v%d", i)
		vs[i] = r.joinOn(r.dialRawSmall(), names[i])
		r.shrinkServerSendBuffer(vs[i])
	}
	slow0, pong0 := r.counterSlow(), counterValue(r.s.metrics.timeouts.WithLabelValues("pong"))
	leaves := counterValue(r.s.metrics.chat.Leaves)
	content := strings.Repeat("z", 1500)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // flood: slow consumers and write errors
		defer wg.Done()
		for i := range 200 {
			if r.ctl.trySend(fmt.Sprintf(`{"content":"%03d %s"}`, i, content)) != nil {
				return
			}
		}
	}()
	go func() { // resets: read and write errors, half of the victims
		defer wg.Done()
		for i, v := range vs {
			if i%2 == 0 {
				resetClose(v.nc)
			}
		}
	}()
	if withShutdown {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := r.s.Shutdown(ctx); err != nil {
			t.Logf("shutdown: %v", err)
		}
		wg.Wait()
		r.closeAll()
		// Exactly one cleanup each: the counters never go negative and every
		// member left once (the control too, at shutdown).
		if c := r.s.nconns.Load(); c != 0 {
			t.Errorf("connections %d after shutdown, want 0", c)
		}
		if c := r.s.wsConns.Load(); c != 0 {
			t.Errorf("upgraded connections %d after shutdown, want 0", c)
		}
		if got := counterValue(r.s.metrics.chat.Leaves) - leaves; got != n+1 {
			t.Errorf("%v leaves for %d members", got, n+1)
		}
		var seen []chatMsg
		for m := range r.ctl.msgs {
			seen = append(seen, m)
		}
		for _, name := range names {
			if c := countMsg(seen, chatMsg{"System", name + " left the chat"}); c > 1 {
				t.Errorf("%s left %d times", name, c)
			}
		}
		r.ctl.close()
		r.settle(r.fds0, r.gos0)
		return
	}
	wg.Wait()
	eventually(t, 20*time.Second, "every victim cleaned up", func() bool { return r.s.hub.Members() == 1 })
	seen := r.finish()
	expectLeftOnce(t, seen, names...)
	if got := counterValue(r.s.metrics.chat.Leaves) - leaves; got != n {
		t.Errorf("%v leaves for %d victims", got, n)
	}
	slow, pong := r.counterSlow()-slow0, counterValue(r.s.metrics.timeouts.WithLabelValues("pong"))-pong0
	t.Logf("of %d victims (half reset): %v evicted as slow consumers, %v dropped by ping timeout", n, slow, pong)
	if slow == 0 {
		t.Error("no slow-consumer eviction took part in the race")
	}
}

func rel39MidFrame(t *testing.T) {
	// In-process half: the client's socket dies (RST, as after kill -9) in
	// the middle of a frame. The process half (a real client process killed
	// with SIGKILL) is TestReliabilityProcess/39_client_killed_mid_frame.
	r := newRig(t, Config{})
	for _, name := range []string{"halfhead", "halfbody"} {
		rc := r.rawJoin(name)
		f := textFrame(`{"content":"` + strings.Repeat("never ", 40) + `"}`)
		if name == "halfhead" {
			rc.write(f[:1])
		} else {
			rc.write(f[:len(f)/2])
		}
		resetClose(rc.nc)
	}
	seen := r.finish()
	expectLeftOnce(t, seen, "halfhead", "halfbody")
	for _, m := range seen {
		if strings.Contains(m.Content, "never") {
			t.Errorf("partial message broadcast: %.40q", m.Content)
		}
	}
}
