package server

// RELIABILITY.md, handshake and admission (items 1-8).

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// ---- Handshake and admission ----------------------------------------------------

func rel01MalformedUpgrade(t *testing.T) {
	r := newRig(t, Config{})
	upgrades := counterValue(r.s.metrics.upgrades)
	hdr := func(skip string) string {
		var b strings.Builder
		for _, h := range []string{"Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
			"Sec-WebSocket-Key: " + wsKey, "Sec-WebSocket-Version: 13"} {
			if !strings.HasPrefix(h, skip+":") {
				b.WriteString(h + "\r\n")
			}
		}
		return b.String()
	}
	swap := func(name, value string) string { return hdr(name) + name + ": " + value + "\r\n" }
	for _, tc := range []struct {
		name, req string
		want      int
	}{
		{"POST", "POST /ws HTTP/1.1\r\n" + hdr("") + "\r\n", 400},
		{"HTTP/1.0", "GET /ws HTTP/1.0\r\n" + hdr("") + "\r\n", 400},
		{"no Upgrade", "GET /ws HTTP/1.1\r\n" + hdr("Upgrade") + "\r\n", 400},
		{"Upgrade h2c", "GET /ws HTTP/1.1\r\n" + swap("Upgrade", "h2c") + "\r\n", 400},
		{"no Connection", "GET /ws HTTP/1.1\r\n" + hdr("Connection") + "\r\n", 400},
		{"Connection close", "GET /ws HTTP/1.1\r\n" + swap("Connection", "close") + "\r\n", 400},
		{"no key", "GET /ws HTTP/1.1\r\n" + hdr("Sec-WebSocket-Key") + "\r\n", 400},
		{"short key", "GET /ws HTTP/1.1\r\n" + swap("Sec-WebSocket-Key", "abc") + "\r\n", 400},
		{"no version", "GET /ws HTTP/1.1\r\n" + hdr("Sec-WebSocket-Version") + "\r\n", 400},
		{"no Host", "GET /ws HTTP/1.1\r\n" + hdr("Host") + "\r\n", 400},
		{"malformed request line", "GET /ws\r\n" + hdr("") + "\r\n", 400},
		{"malformed header line", "GET /ws HTTP/1.1\r\n" + hdr("") + "no colon here\r\n\r\n", 400},
		{"version 8", "GET /ws HTTP/1.1\r\n" + swap("Sec-WebSocket-Version", "8") + "\r\n", 426},
		{"version 14", "GET /ws HTTP/1.1\r\n" + swap("Sec-WebSocket-Version", "14") + "\r\n", 426},
	} {
		rc := r.dialRaw()
		rc.write([]byte(tc.req))
		resp, err := rc.response()
		if err != nil {
			t.Errorf("%s: no HTTP response: %v", tc.name, err)
			continue
		}
		if resp.StatusCode != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
		if tc.want == 426 && resp.Header.Get("Sec-WebSocket-Version") != "13" {
			t.Errorf("%s: 426 without Sec-WebSocket-Version: 13 (got %q)", tc.name, resp.Header.Get("Sec-WebSocket-Version"))
		}
		if !rc.closedByServer(5 * time.Second) {
			t.Errorf("%s: connection left open after the rejection", tc.name)
		}
	}
	if got := counterValue(r.s.metrics.upgrades); got != upgrades {
		t.Errorf("upgrades went from %v to %v: a malformed request was upgraded", upgrades, got)
	}
	expectNoNotices(t, r.finish())
}

func rel02WrongPath(t *testing.T) {
	r := newRig(t, Config{})
	upgrades := counterValue(r.s.metrics.upgrades)
	for _, tc := range []struct {
		name, req string
		want      int
	}{
		{"upgrade on /", upgradeRequest("/"), -1}, // the page, never 101
		{"upgrade on /nope", upgradeRequest("/nope"), 404},
		{"upgrade on /ws/", upgradeRequest("/ws/"), 404},
		{"upgrade on /wsx", upgradeRequest("/wsx"), 404},
		{"upgrade on /WS", upgradeRequest("/WS"), 404},
		{"plain GET /ws", "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400},
		{"plain GET /ws with Connection: close", "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 400},
	} {
		rc := r.dialRaw()
		rc.write([]byte(tc.req))
		resp, err := rc.response()
		if err != nil {
			t.Errorf("%s: no HTTP response: %v", tc.name, err)
			continue
		}
		if resp.StatusCode == 101 || (tc.want > 0 && resp.StatusCode != tc.want) {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
	}
	if got := counterValue(r.s.metrics.upgrades); got != upgrades {
		t.Errorf("a wrong-path request was upgraded")
	}
	expectNoNotices(t, r.finish())
}

func rel03Origin(t *testing.T) {
	r := newRig(t, Config{Origins: []string{"https://chat.example.com"}})
	rejects := counterValue(r.s.metrics.originRejects)
	for _, tc := range []struct {
		origin string // "" = no Origin header
		want   int
	}{
		{"https://evil.example", 403},
		{"null", 403},
		{"https://chat.example.com.evil.net", 403}, // prefix look-alike
		{"https://evilchat.example.com", 403},      // suffix look-alike
		{"https://chat.example.co", 403},
		{"http://chat.example.com", 403}, // other scheme
		{"https://chat.example.com:8443", 403},
		{"http://127.0.0.1.evil.net", 403}, // same-origin prefix look-alike
		{"http://evil127.0.0.1", 403},
		{"http://127.0.0.1:1", 403}, // same host, other port
		{"file://", 403},
		{"", 101},                         // wscat and other tools
		{"https://chat.example.com", 101}, // allow-listed
		{"https://CHAT.example.com", 101}, // hosts are case-insensitive
		{"http://127.0.0.1", 101},         // same origin as Host
	} {
		var extra []string
		if tc.origin != "" {
			extra = append(extra, "Origin: "+tc.origin)
		}
		rc := r.dialRaw()
		rc.write([]byte(upgradeRequest("/ws", extra...)))
		resp, err := rc.response()
		if err != nil {
			t.Errorf("Origin %q: %v", tc.origin, err)
			continue
		}
		if resp.StatusCode != tc.want {
			t.Errorf("Origin %q: status %d, want %d", tc.origin, resp.StatusCode, tc.want)
		}
		rc.nc.Close()
	}
	if got := counterValue(r.s.metrics.originRejects) - rejects; got != 11 {
		t.Errorf("origin rejects %v, want 11", got)
	}
	expectNoNotices(t, r.finish())
}

func rel04Slowloris(t *testing.T) {
	n, timeout := 5000, 4*time.Second
	if testing.Short() {
		n, timeout = 500, 2*time.Second
	}
	r := newRig(t, Config{HandshakeTimeout: timeout})
	timeouts := counterValue(r.s.metrics.timeouts.WithLabelValues("handshake"))
	// Three kinds of sloth: silent, a partial head then silence, and drippers
	// that send one byte of a long head every 50 ms (which would take 30 s).
	drip := []byte(upgradeRequest("/ws", "X-Pad: "+strings.Repeat("p", 600)))
	ndrip := min(100, n/10)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for i := range n {
		c, err := net.DialTimeout("tcp", r.s.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatalf("dial sloth %d: %v", i, err)
		}
		conns = append(conns, c)
		if i%2 == 1 && i >= ndrip {
			c.Write([]byte("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr"))
		}
	}
	dialed := time.Since(start)
	stopDrip := make(chan struct{})
	var dripWG sync.WaitGroup
	dripWG.Add(1)
	go func() {
		defer dripWG.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < len(drip); i++ {
			select {
			case <-stopDrip:
				return
			case <-tick.C:
			}
			for _, c := range conns[:ndrip] {
				c.SetWriteDeadline(time.Now().Add(time.Second))
				c.Write(drip[i : i+1]) // fails once the server closed it
			}
		}
	}()
	defer func() { close(stopDrip); dripWG.Wait() }()

	// A new client connects and chats quickly while every sloth is held.
	eventually(t, 20*time.Second, "every sloth accepted", func() bool { return r.s.nconns.Load() >= int64(n) })
	t0 := time.Now()
	k := newCtrl(t, r.s.url, "newcomer")
	k.marker()
	joinTook := time.Since(t0)
	held := r.s.nconns.Load() - 2
	t.Logf("%d sloths dialed in %v; a new client joined and chatted in %v while %d were held", n, dialed, joinTook, held)
	timingBound(t, joinTook > 2*time.Second, "new client needed %v to join and chat next to %d sloths", joinTook, n)
	if held < int64(n/2) {
		t.Errorf("only %d of %d sloths were still held when the new client joined: the test did not overlap them", held, n)
	}
	if st := r.s.pool.Stats(); st.Waiting > 0 {
		t.Errorf("worker pool has a backlog of %d next to sloths", st.Waiting)
	}

	// Every sloth is closed at the absolute deadline: silent, partial and
	// dripping ones alike (the drippers would need 30 s to finish).
	limit := start.Add(dialed + timeout + 5*time.Second)
	for i, c := range conns {
		c.SetReadDeadline(limit)
		_, err := io.Copy(io.Discard, c)
		if err != nil && !isClosedErr(err) {
			t.Fatalf("sloth %d (drip=%v) not closed by the handshake deadline: %v", i, i < ndrip, err)
		}
	}
	t.Logf("all sloths closed %v after the first dial (deadline %v)", time.Since(start), timeout)
	if got := counterValue(r.s.metrics.timeouts.WithLabelValues("handshake")) - timeouts; got < float64(n) {
		t.Errorf("handshake timeouts %v, want >= %d", got, n)
	}
	close(stopDrip)
	dripWG.Wait()
	stopDrip = make(chan struct{})
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	k.close()
	r.finish()
}

func rel05OversizedHandshake(t *testing.T) {
	r := newRig(t, Config{})
	upgrades := counterValue(r.s.metrics.upgrades)

	// Exactly one byte over the 8 KiB cap, no end of head: 431.
	rc := r.dialRaw()
	over := []byte("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
	over = append(over, bytes.Repeat([]byte("a"), maxHandshake+1-len(over))...)
	rc.write(over)
	if resp, err := rc.response(); err != nil || resp.StatusCode != 431 {
		t.Errorf("head of %d bytes: %v %v, want 431", len(over), resp, err)
	}

	// 10,000 headers and a 64 MiB header line: rejected at the cap, so the
	// server never reads (or allocates) more than a few socket buffers' worth.
	var many bytes.Buffer
	many.WriteString(upgradeRequest("/ws")[:len(upgradeRequest("/ws"))-2])
	for i := range 10000 {
		fmt.Fprintf(&many, "X-H%d: v\r\n", i)
	}
	many.WriteString("\r\n")
	chunk := bytes.Repeat([]byte("b"), 64<<10)
	for _, tc := range []struct {
		name  string
		head  []byte
		total int
	}{
		{"10,000 headers", many.Bytes(), many.Len()},
		{"64 MiB header line", []byte("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: "), 64 << 20},
	} {
		alloc0 := totalAlloc()
		rc := r.dialRaw()
		status := make(chan int, 1)
		go func() { // read concurrently: the server answers while we still write
			resp, err := rc.response()
			if err != nil {
				status <- -1 // reset before the answer could be read
				return
			}
			status <- resp.StatusCode
		}()
		rc.nc.SetWriteDeadline(time.Now().Add(20 * time.Second))
		written, err := rc.nc.Write(tc.head)
		for err == nil && written < tc.total {
			var n int
			n, err = rc.nc.Write(chunk)
			written += n
		}
		code := <-status
		grew := int64(totalAlloc() - alloc0)
		t.Logf("%s: status %d after %d bytes written (%v); heap allocated meanwhile %d KiB", tc.name, code, written, err, grew>>10)
		if code != 431 && code != -1 {
			t.Errorf("%s: status %d, want 431", tc.name, code)
		}
		if tc.total == 64<<20 && err == nil {
			t.Errorf("%s: the server read the whole 64 MiB line", tc.name)
		}
		if grew > 8<<20 {
			t.Errorf("%s: %d MiB allocated: memory is not flat", tc.name, grew>>20)
		}
	}
	if got := counterValue(r.s.metrics.upgrades); got != upgrades {
		t.Errorf("an oversized head was upgraded")
	}
	expectNoNotices(t, r.finish())
}

func rel06Pipelined(t *testing.T) {
	r := newRig(t, Config{})
	rc := r.dialRaw()
	one := append([]byte(upgradeRequest("/ws")), textFrame(`{"username":"eager","content":"first"}`)...)
	one = append(one, textFrame(`{"content":"second"}`)...)
	rc.write(one) // one write(2): the head and two frames in one segment
	if code := rc.status(); code != 101 {
		t.Fatalf("status %d", code)
	}
	rc.waitText(`{"username":"eager","content":"first"}`)
	rc.waitText(`{"username":"System","content":"eager joined the chat"}`)
	rc.waitText(`{"username":"eager","content":"second"}`)
	seen := r.ctl.until(chatMsg{"eager", "second"}, 10*time.Second)
	if countMsg(seen, chatMsg{"eager", "first"}) != 1 {
		t.Errorf("control did not get the pipelined join content: %v", seen)
	}
	rc.nc.Close()
	expectLeftOnce(t, r.finish(), "eager")
}

func rel07NoDeflate(t *testing.T) {
	r := newRig(t, Config{})
	rc := r.dialRaw()
	rc.write([]byte(upgradeRequest("/ws", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-webkit-deflate-frame")))
	resp, err := rc.response()
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		t.Errorf("extension negotiated: %q", ext)
	}
	rc.write(textFrame(`{"username":"squeezer"}`))
	rc.waitText(`{"username":"System","content":"squeezer joined the chat"}`)
	rc.write(frame(true, 4, 1, true, []byte{0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00})) // RSV1 "compressed"
	if code := rc.readClose(); code != 1002 {
		t.Errorf("RSV1 frame: close %d, want 1002", code)
	}
	// A library asking for compression still works, uncompressed.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, r.s.url, &websocket.DialOptions{CompressionMode: websocket.CompressionContextTakeover})
	if err != nil {
		t.Fatal(err)
	}
	r.onFinish(func() { c.CloseNow() })
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"username":"zipper","content":"`+strings.Repeat("z", 500)+`"}`)); err != nil {
		t.Fatal(err)
	}
	r.ctl.until(chatMsg{"zipper", strings.Repeat("z", 500)}, 10*time.Second)
	c.Close(websocket.StatusNormalClosure, "")
	expectLeftOnce(t, r.finish(), "squeezer", "zipper")
}

func rel08MaxConns(t *testing.T) {
	r := newRig(t, Config{MaxConns: 3})
	shed := counterValue(r.s.metrics.shed)
	a := r.rawJoin("a")
	r.upgradeRaw()
	for range 3 {
		rc := r.dialRaw()
		t0 := time.Now()
		rc.write([]byte(upgradeRequest("/ws")))
		if code := rc.status(); code != 503 {
			t.Errorf("over max-conns: status %d, want 503", code)
		}
		d := time.Since(t0)
		timingBound(t, d > 2*time.Second, "503 took %v", d)
		if !rc.closedByServer(5 * time.Second) {
			t.Errorf("refused connection left open")
		}
	}
	if got := counterValue(r.s.metrics.shed) - shed; got != 3 {
		t.Errorf("shed %v, want 3", got)
	}
	// Existing users are unaffected, and a freed slot is usable again.
	r.ctl.marker()
	a.nc.Close()
	eventually(t, 10*time.Second, "a slot to free", func() bool { return r.s.wsConns.Load() == 2 })
	r.rawJoin("b")
	seen := r.finish()
	expectLeftOnce(t, seen, "a", "b")
}

// violate joins a raw client as name, sends b, and checks the close code.
