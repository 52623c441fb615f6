package server

// RELIABILITY.md, shutdown (items 44-46).

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// ---- Shutdown ---------------------------------------------------------------------

func rel44Shutdown(t *testing.T) {
	n := 300
	if testing.Short() {
		n = 100
	}
	r := newRig(t, Config{})
	conns := make([]*rawConn, n)
	for i := range conns {
		rc := r.dialRaw()
		b := []byte(upgradeRequest("/ws"))
		if i%2 == 0 { // half joined, half only upgraded
			b = append(b, textFrame(fmt.Sprintf(`{"username":"m%d"}`, i))...)
		}
		rc.write(b)
		if code := rc.status(); code != 101 {
			t.Fatalf("status %d", code)
		}
		conns[i] = rc
	}
	eventually(t, 30*time.Second, "members joined", func() bool { return r.s.hub.Members() == n/2+1 })
	r.ctl.marker()
	codes := make([]int, n)
	notices := make([]int, n)
	var wg sync.WaitGroup
	for i, rc := range conns {
		wg.Add(1)
		go func() { // a polite client: read to the close frame and echo it
			defer wg.Done()
			for {
				op, p, err := rc.readFrame(20 * time.Second)
				if err != nil {
					codes[i] = -1
					return
				}
				if op == 1 && bytes.Contains(p, []byte("left the chat")) {
					notices[i]++
				}
				if op == 8 {
					codes[i] = int(binary.BigEndian.Uint16(p))
					rc.nc.Write(frame(true, 0, 8, true, p[:2]))
					return
				}
			}
		}()
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.s.Shutdown(ctx); err != nil {
		t.Errorf("shutdown with polite clients: %v", err)
	}
	took := time.Since(t0)
	wg.Wait()
	t.Logf("shutdown with %d clients took %v", n, took)
	for i := range conns {
		if codes[i] != 1001 {
			t.Errorf("client %d: close %d, want 1001", i, codes[i])
		}
		if notices[i] != 0 {
			t.Errorf("client %d saw %d leave notices during shutdown", i, notices[i])
		}
	}
	var ctlSeen []chatMsg
	for m := range r.ctl.msgs {
		ctlSeen = append(ctlSeen, m)
	}
	expectNoNotices(t, ctlSeen)
	if err := r.ctl.endErr(5 * time.Second); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("control: %v, want 1001", err)
	}
	timingBound(t, took > 5*time.Second, "graceful shutdown took %v", took)
	r.closeAll()
	r.ctl.close()
	r.settle(r.fds0, r.gos0)
}

func rel45Admission(t *testing.T) {
	r := newRig(t, Config{CloseLinger: time.Minute})
	r.joinOn(r.dialRawSmall(), "stuck") // never reads, never echoes
	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	go func() { done <- r.s.Shutdown(ctx) }()
	eventually(t, 5*time.Second, "draining", func() bool { return r.s.draining.Load() })
	// While the stuck client holds the drain open: not ready, no upgrades.
	resp, err := http.Get(r.s.base + "/readyz")
	if err != nil {
		t.Fatalf("readyz while draining: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Errorf("readyz while draining: %d, want 503", resp.StatusCode)
	}
	rc := r.dialRaw()
	rc.write([]byte(upgradeRequest("/ws")))
	if code := rc.status(); code != 503 {
		t.Errorf("upgrade while draining: %d, want 503", code)
	}
	if resp, err := http.Get(r.s.base + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Errorf("healthz while draining: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	<-done
	r.closeAll()
	r.ctl.close()
	r.settle(r.fds0, r.gos0)
}

func rel46Stuck(t *testing.T) {
	const timeout = 500 * time.Millisecond
	r := newRig(t, Config{CloseLinger: time.Minute, SendQueue: 1 << 20, Rate: 1e6, Burst: 1 << 30})
	// Stuck clients: never read (their buffers are full of broadcasts, so even
	// the close frame cannot be written), never echo a close.
	for i := range 5 {
		r.joinOn(r.dialRawSmall(), fmt.Sprintf("stuck%d", i))
	}
	content := strings.Repeat("k", 1900)
	for i := range 100 {
		r.ctl.say(fmt.Sprintf("%03d %s", i, content))
	}
	r.ctl.until(chatMsg{"control", fmt.Sprintf("%03d %s", 99, content)}, 10*time.Second)
	half := r.dialRaw() // half a handshake
	half.write([]byte("GET /ws HTTP/1.1\r\n"))
	eventually(t, 5*time.Second, "half handshake accepted", func() bool { return r.s.nconns.Load() == 7 })
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := r.s.Shutdown(ctx)
	took := time.Since(t0)
	t.Logf("shutdown with stuck clients: %v after %v (timeout %v)", err, took, timeout)
	if err == nil {
		t.Error("stuck clients shut down gracefully; the test did not make them stuck")
	}
	timingBound(t, took > timeout+1500*time.Millisecond, "stuck clients delayed shutdown to %v (timeout %v)", took, timeout)
	if c := r.s.nconns.Load(); c != 0 {
		t.Errorf("%d connections left after shutdown", c)
	}
	r.closeAll()
	r.ctl.close()
	r.settle(r.fds0, r.gos0)
}
