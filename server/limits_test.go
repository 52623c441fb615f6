package server

// Proofs of issue #13 (RELIABILITY.md 47–50: bounded memory and CPU under
// hostile and storm load), one subtest per mechanism. Each was checked to
// fail with its mechanism reverted (see the commit that added it). Real
// sockets, an independent client (coder/websocket) or raw frames; counts,
// bytes and states are asserted, never wall-clock or CPU upper bounds.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/coder/websocket"
)

func TestLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"47_partial_write_tail_then_intact_1008", limPartialWriteTail},
		{"47_escaped_burst_never_evicts_readers", limEscapedBurst},
		{"47_global_outbound_bound", limGlobalOutbound},
		{"47_global_inbound_bound", limGlobalInbound},
		{"47_large_header_reserves_what_arrives", limLargeHeader},
		{"49_utf8_across_1024_fragments", limUTF8Fragments},
		{"49_whitespace_counts_against_rate", limWhitespaceRate},
		{"49_rate_limit_counts_arrival", limRateArrival},
		{"50_confusable_names", limConfusables},
		{"50_close_codes_not_labels", limCloseCodeLabels},
		{"ping_between_fragments_at_max_message", limPingAtMaxMessage},
		{"overload_spikes_apart_shed_nobody", limOverloadSpikes},
		{"drain_not_held_by_new_connections", limDrainWhileConnecting},
		{"presence_summaries", limPresenceSummaries},
	} {
		t.Run(tc.name, tc.fn)
	}
}

// sampler polls f until stop and keeps the largest value seen.
type sampler struct {
	most atomic.Int64
	quit chan struct{}
	done chan struct{}
}

func sample(f func() int64) *sampler {
	s := &sampler{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			if v := f(); v > s.most.Load() {
				s.most.Store(v)
			}
			select {
			case <-s.quit:
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}()
	return s
}

func (s *sampler) stop() int64 {
	select {
	case <-s.quit:
	default:
		close(s.quit)
	}
	<-s.done
	return s.most.Load()
}

// readStream reads server frames until a close frame and returns the text
// payloads and the close code (-1: the stream ended without a close frame,
// or was not a valid frame sequence).
func (rc *rawConn) readStream(timeout time.Duration) (texts []string, code int) {
	for {
		op, p, err := rc.readFrame(timeout)
		if err != nil {
			return texts, -1
		}
		switch op {
		case 1:
			texts = append(texts, string(p))
		case 8:
			if len(p) < 2 {
				return texts, 1005
			}
			return texts, int(binary.BigEndian.Uint16(p))
		case 9, 10:
		default:
			return texts, -1
		}
	}
}

// ---- 47: outbound ------------------------------------------------------------

// A client whose buffers fill in the middle of a broadcast batch larger
// than its send queue is evicted, but only after the frame the kernel took
// part of is finished: the close frame arrives intact after whole frames.
// Pending output never passes the send queue (the close frame aside).
func limPartialWriteTail(t *testing.T) {
	// Every frame (2,000 '<', JSON-escaped to 12 KB) is larger than the
	// queue, and than what the kernel takes at once from a full socket.
	const queue = 4096
	r := newRig(t, Config{SendQueue: queue, Rate: 1e6, Burst: 1 << 30})
	var slows []*rawConn
	for i := range 4 {
		rc := r.joinOn(r.dialRawSmall(), fmt.Sprintf("slow%d", i))
		r.shrinkServerSendBuffer(rc)
		slows = append(slows, rc)
	}
	slow0 := r.counterSlow()
	pending := sample(func() int64 { return int64(maxPendingOut(r.s.Server)) })
	defer pending.stop()
	var sent []string
	for r.counterSlow()-slow0 < float64(len(slows)) {
		if len(sent) > 20000 {
			t.Fatalf("only %v of %d non-readers evicted after %d broadcasts", r.counterSlow()-slow0, len(slows), len(sent))
		}
		for range 10 {
			n := len(sent)
			content := fmt.Sprintf("%06d %s", n, strings.Repeat("<", 2000-7-n*97%300))
			sent = append(sent, content)
			r.ctl.say(content)
		}
		r.ctl.until(chatMsg{"control", sent[len(sent)-1]}, 10*time.Second)
	}
	most := pending.stop()
	t.Logf("%d non-readers evicted after %d broadcasts; largest pending output %d bytes", len(slows), len(sent), most)
	// What may pass the queue is the tail of the one frame the kernel took
	// part of (finished so the stream stays whole), then the close frame.
	if limit := int64(4 + 6*2000 + 64 + 2 + 125); most > limit {
		t.Errorf("pending output reached %d bytes with a %d-byte send queue and 12 KB frames, want ≤ %d", most, queue, limit)
	}
	want := map[string]int{}
	for i, c := range sent {
		want[c] = i
	}
	for i, rc := range slows {
		texts, code := rc.readStream(10 * time.Second)
		last := -1
		for _, p := range texts {
			var m chatMsg
			if err := json.Unmarshal([]byte(p), &m); err != nil {
				t.Errorf("slow%d: corrupt frame %.60q: %v", i, p, err)
				break
			}
			if m.Username != "control" {
				continue
			}
			idx, ok := want[m.Content]
			if !ok || idx <= last {
				t.Errorf("slow%d: unexpected or out-of-order message %.20q", i, m.Content)
				break
			}
			last = idx
		}
		if code != 1008 {
			t.Errorf("slow%d: stream ended with %d after %d frames, want an intact close 1008", i, code, len(texts))
		}
	}
	r.finish()
}

// Many senders burst content that JSON-escapes sixfold ('<' → \u003c):
// rounds hand each member at most MaxBatch, so readers that keep reading
// are never evicted, and every message arrives.
func limEscapedBurst(t *testing.T) {
	if raceEnabled {
		// Readers on 64 KiB socket buffers must keep pace with a 3.6 MB
		// burst; under the race detector they cannot. CI runs this test
		// without -race as well (.ci/run).
		t.Skip("timing-sensitive: run without -race")
	}
	const (
		senders = 12
		each    = 25
		readers = 3
	)
	// Rounds at most every 100 ms, so the 3.6 MB burst queues up: without
	// the per-round cap one round would hand every member all of it.
	r := newRig(t, Config{RoundInterval: 100 * time.Millisecond, Rate: 1e6, Burst: 1 << 30})
	var members []*ctrl
	for i := range readers {
		members = append(members, r.newSmallCtrl(fmt.Sprintf("r%d", i)))
	}
	// Senders are raw clients that read (and discard) everything, and
	// write their whole burst at once.
	var snd []*rawConn
	for i := range senders {
		rc := r.rawJoin(fmt.Sprintf("s%d", i))
		go io.Copy(io.Discard, rc.nc)
		snd = append(snd, rc)
	}
	slow0, write0 := r.counterSlow(), counterValue(r.s.metrics.timeouts.WithLabelValues("write"))
	var wants []chatMsg
	bursts := make([][]byte, senders)
	for i := range snd {
		for j := range each {
			name := fmt.Sprintf("s%d", i)
			prefix := fmt.Sprintf("%s-%03d ", name, j)
			m := chatMsg{name, prefix + strings.Repeat("<", 2000-len(prefix))}
			wants = append(wants, m)
			bursts[i] = append(bursts[i], textFrame(fmt.Sprintf(`{"content":%q}`, m.Content))...)
		}
	}
	var wg sync.WaitGroup
	for i, rc := range snd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := rc.nc.Write(bursts[i]); err != nil {
				t.Errorf("s%d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	for _, k := range append(members, r.ctl) {
		k.untilAll(wants, 60*time.Second)
	}
	t.Logf("%d messages of 12 KB in %d rounds", len(wants), r.s.hub.Rounds())
	if got := r.counterSlow() - slow0; got != 0 {
		t.Errorf("%v reading members evicted as slow consumers", got)
	}
	if got := counterValue(r.s.metrics.timeouts.WithLabelValues("write")) - write0; got != 0 {
		t.Errorf("%v write timeouts among reading members", got)
	}
	for _, k := range members {
		k.close()
	}
	r.finish()
}

// newSmallCtrl is newCtrl with 64 KiB socket buffers at both ends: a
// reader that keeps reading, on a link whose kernels cannot hide a
// batch of megabytes.
func (r *rig) newSmallCtrl(name string) *ctrl {
	t := r.t
	t.Helper()
	const size = 64 << 10
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, size)
		})
		return errors.Join(err, serr)
	}}
	var nc net.Conn
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		nc = c
		return c, err
	}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, r.s.url, &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		t.Fatalf("dial %s: %v", r.s.url, err)
	}
	c.SetReadLimit(1 << 20)
	k := &ctrl{t: t, name: name, conn: c, msgs: make(chan chatMsg, 1<<16), done: make(chan struct{})}
	go k.loop()
	t.Cleanup(k.close)
	port := nc.LocalAddr().(*net.TCPAddr).Port
	found := false
	r.s.conns.each(func(c *Conn) {
		if sa, err := syscall.Getpeername(int(c.fd)); err == nil {
			if in, ok := sa.(*syscall.SockaddrInet4); ok && in.Port == port {
				found = syscall.SetsockoptInt(int(c.fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, size) == nil
			}
		}
	})
	if !found {
		t.Fatalf("no server connection for client port %d", port)
	}
	k.send(fmt.Sprintf(`{"username":%q}`, name))
	k.marker()
	return k
}

// Non-readers cannot make the server hold more than -max-outbound (plus one
// batch per member): rounds wait, the non-readers are evicted by the write
// timeout rather than by filling their queues, and the clients that stay
// get everything.
func limGlobalOutbound(t *testing.T) {
	const (
		queue    = 64 << 10
		bound    = 64 << 10
		maxBatch = queue / 4 // max(SendQueue/4, 4 KiB)
		nonReads = 4
		msgs     = 300
	)
	r := newRig(t, Config{SendQueue: queue, MaxOutbound: bound, WriteTimeout: 2 * time.Second,
		Rate: 1e6, Burst: 1 << 30, MaxContent: 4000})
	fast := newCtrl(t, r.s.url, "fast")
	for i := range nonReads {
		rc := r.joinOn(r.dialRawSmall(), fmt.Sprintf("nr%d", i))
		r.shrinkServerSendBuffer(rc)
	}
	members := r.s.hub.Members()
	write0 := counterValue(r.s.metrics.timeouts.WithLabelValues("write"))
	gauge := sample(func() int64 { return r.s.outbound.Load() })
	defer gauge.stop()
	var wants []chatMsg
	for i := range msgs {
		m := chatMsg{"control", fmt.Sprintf("%04d %s", i, strings.Repeat("o", 1900))}
		wants = append(wants, m)
		r.ctl.say(m.Content)
	}
	slow0 := r.counterSlow()
	_ = slow0
	eventually(t, 30*time.Second, "the non-readers evicted", func() bool {
		return r.s.hub.Members() == members-nonReads
	})
	r.ctl.untilAll(wants, 30*time.Second)
	fast.untilAll(wants, 30*time.Second)
	most := gauge.stop()
	t.Logf("outbound gauge peaked at %d bytes (bound %d, %d members, batch cap %d)", most, bound, members, maxBatch)
	if limit := int64(bound + members*maxBatch + members*(2+125)); most > limit {
		t.Errorf("gochat_outbound_pending_bytes reached %d, want ≤ %d", most, limit)
	}
	if got := counterValue(r.s.metrics.timeouts.WithLabelValues("write")) - write0; got != nonReads {
		t.Errorf("%v write timeouts, want %d: non-readers filled their queues instead (rounds did not wait)", got, nonReads)
	}
	fast.close()
	r.finish()
}

// ---- 47: inbound -------------------------------------------------------------

// paddedChat is a chat message of exactly size bytes: content, then JSON
// whitespace.
func paddedChat(content string, size int) []byte {
	head := fmt.Sprintf(`{"content":%q`, content)
	return []byte(head + strings.Repeat(" ", size-len(head)-1) + "}")
}

// Many clients each hold an incomplete frame declaring almost -max-message:
// the server buffers no more than -max-inbound plus a small read per
// client, parks them (counted), and delivers every message once the frames
// complete; a control client chats on meanwhile.
func limGlobalInbound(t *testing.T) {
	const (
		clients = 100
		bound   = 32 << 10
		size    = 16000 // near the default -max-message (16 KiB)
	)
	r := newRig(t, Config{MaxInbound: bound, Rate: 1e6, Burst: 1 << 30})
	workers := r.s.cfg.Workers
	var conns []*rawConn
	var frames [][]byte
	var wants []chatMsg
	for i := range clients {
		name := fmt.Sprintf("in%03d", i)
		conns = append(conns, r.rawJoin(name))
		content := fmt.Sprintf("%s %s", name, strings.Repeat("i", 1900))
		wants = append(wants, chatMsg{name, content})
		frames = append(frames, frame(true, 0, 1, true, paddedChat(content, size)))
	}
	r.ctl.marker()
	parks0 := counterValue(r.s.metrics.inboundParks)
	gauge := sample(func() int64 { return r.s.inbound.Load() })
	defer gauge.stop()
	half := 8 + size/2
	for i, rc := range conns {
		rc.write(frames[i][:half])
	}
	eventually(t, 20*time.Second, "clients with partial input parked", func() bool {
		return counterValue(r.s.metrics.inboundParks) > parks0
	})
	for range 5 { // the control chats on meanwhile
		r.ctl.marker()
	}
	for i, rc := range conns {
		rc.write(frames[i][half:])
	}
	r.ctl.untilAll(wants, 60*time.Second)
	most := gauge.stop()
	limit := int64(bound + clients*smallRead + workers*(size+64))
	t.Logf("inbound gauge peaked at %d bytes (bound %d, %d clients, limit %d); parks %v",
		most, bound, clients, limit, counterValue(r.s.metrics.inboundParks)-parks0)
	if most > limit {
		t.Errorf("gochat_inbound_buffered_bytes reached %d, want ≤ %d", most, limit)
	}
	eventually(t, 10*time.Second, "inbound gauge back to 0", func() bool { return r.s.inbound.Load() == 0 })
	r.finish()
}

// A 14-byte header declaring a large frame reserves only what has a chance
// to arrive soon, not the declared size.
func limLargeHeader(t *testing.T) {
	const maxMsg = 1 << 20
	r := newRig(t, Config{MaxMessage: maxMsg, MaxInbound: maxMsg})
	rc := r.rawJoin("big")
	payload := bytes.Repeat([]byte{' '}, maxMsg)
	payload[0] = '{'
	payload[len(payload)-1] = '}'
	f := frame(true, 0, 1, true, payload)
	const sent = 1000
	gauge := sample(func() int64 { return r.s.inbound.Load() })
	defer gauge.stop()
	rc.write(f[:14+sent])
	eventually(t, 10*time.Second, "the partial frame buffered", func() bool { return r.s.inbound.Load() > 0 })
	r.ctl.marker()
	most := gauge.stop()
	t.Logf("header declaring %d bytes + %d sent: inbound gauge peaked at %d", maxMsg, sent, most)
	if limit := int64(64<<10 + 2*(14+sent) + 1024); most > limit {
		t.Errorf("inbound gauge %d after a header declaring %d bytes and %d sent, want ≤ %d", most, maxMsg, sent, limit)
	}
	r.finish()
}

// ---- 49: per-message checks ------------------------------------------------------

// A message split into 1,024 fragments, multi-byte characters cut across
// fragment boundaries: valid is delivered, one bad byte in the middle is 1007.
func limUTF8Fragments(t *testing.T) {
	r := newRig(t, Config{})
	send := func(rc *rawConn, msg []byte) {
		const frags = maxFragments
		step := (len(msg) + frags - 1) / frags
		var b []byte
		for i := range frags {
			lo, hi := min(i*step, len(msg)), min((i+1)*step, len(msg))
			if i == frags-1 {
				hi = len(msg)
			}
			op := byte(0)
			if i == 0 {
				op = 1
			}
			b = append(b, frame(i == frags-1, 0, op, true, msg[lo:hi])...)
		}
		rc.write(b)
	}
	content := strings.Repeat("€ü", 640) // 3+2 bytes: fragments of 5 bytes cut characters
	good := r.rawJoin("frag")
	msg := []byte(fmt.Sprintf(`{"content":%q}`, content))
	send(good, msg)
	r.ctl.until(chatMsg{"frag", content}, 10*time.Second)

	bad := r.rawJoin("badfrag")
	msg = []byte(fmt.Sprintf(`{"content":%q}`, content))
	msg[len(msg)/2] = 0xff
	send(bad, msg)
	if code := bad.readClose(); code != 1007 {
		t.Errorf("invalid UTF-8 in the middle fragment: close %d, want 1007", code)
	}
	seen := r.finish()
	for _, m := range seen {
		if m.Username == "badfrag" {
			t.Errorf("a message with invalid UTF-8 was broadcast: %.40q", m.Content)
		}
	}
}

// Whitespace-only content is ignored, but still counts against the rate
// limit: a flood of it is refused and closed like any other flood.
func limWhitespaceRate(t *testing.T) {
	r := newRig(t, Config{Rate: 10, Burst: 20})
	rl0 := counterValue(r.s.metrics.chat.RateLimited)
	rc := r.rawJoin("blank")
	var b []byte
	for range 100 {
		b = append(b, textFrame(`{"content":"  \t "}`)...)
	}
	rc.write(b) // one write: the 100 messages arrive at once
	texts, code := rc.readStream(10 * time.Second)
	limited := 0
	for _, p := range texts {
		if p == `{"username":"System","content":"Error: Rate limit exceeded, slow down"}` {
			limited++
		}
	}
	if code != 1008 {
		t.Errorf("whitespace flood: connection ended with %d, want 1008", code)
	}
	if limited == 0 {
		t.Error("no rate-limit Error for 100 whitespace-only messages at once")
	}
	if got := counterValue(r.s.metrics.chat.RateLimited) - rl0; got == 0 {
		t.Error("gochat_rate_limited_total did not move")
	}
	t.Logf("%d rate-limit replies, then close %d", limited, code)
	r.finish()
}

// The only worker stalls for ~2 s on another client's message; an honest
// client sending at half its rate meanwhile finds its messages handled in
// one go afterwards, and is neither limited nor closed: the limiter counts
// from when they arrived.
func limRateArrival(t *testing.T) {
	const stall = 2 * time.Second
	stalled := make(chan struct{}, 1)
	hook := func(p []byte) {
		if bytes.Contains(p, []byte("STALL-NOW")) {
			stalled <- struct{}{}
			time.Sleep(stall)
		}
	}
	r := newRigOpts(t, Config{Workers: 1, Rate: 10, Burst: 2}, rigOpts{hook: hook})
	honest := newCtrl(t, r.s.url, "honest")
	staller := newCtrl(t, r.s.url, "staller")
	rl0 := counterValue(r.s.metrics.chat.RateLimited)
	const n = 18 // 3.6 s at one message per 200 ms: before, during and after the stall
	var wants []chatMsg
	for i := range n {
		if i == 3 {
			staller.say("STALL-NOW")
			<-stalled
		}
		m := chatMsg{"honest", fmt.Sprintf("h%02d", i)}
		wants = append(wants, m)
		honest.say(m.Content)
		time.Sleep(200 * time.Millisecond)
	}
	seen := honest.untilAll(wants, 30*time.Second)
	next := 0
	for _, m := range seen {
		if m.Username == "System" && strings.HasPrefix(m.Content, "Error:") {
			t.Errorf("honest client told %q", m.Content)
		}
		if m.Username == "honest" {
			if next < n && m == wants[next] {
				next++
			} else {
				t.Errorf("honest's message %q out of order (want %q next)", m.Content, wants[min(next, n-1)].Content)
			}
		}
	}
	if got := counterValue(r.s.metrics.chat.RateLimited) - rl0; got != 0 {
		t.Errorf("%v messages rate-limited", got)
	}
	honest.marker()
	staller.close()
	honest.close()
	r.finish()
}

// ---- 50: input never becomes a label or a second name ----------------------------

func limConfusables(t *testing.T) {
	r := newRig(t, Config{})
	alice := newCtrl(t, r.s.url, "alice")
	try := func(name, want string) {
		t.Helper()
		c := dial(t, r.s.url)
		c.send(fmt.Sprintf(`{"username":%q}`, name))
		if m := c.read(); m != (chatMsg{"System", want}) {
			t.Errorf("join as %q: got %+v, want %q", name, m, want)
		}
		c.expectClose(websocket.StatusPolicyViolation)
	}
	try("аlice", "Error: Username is already taken") // Cyrillic а
	for _, name := range []string{"Ꮪystem", "Տystem", "Systҽm", "Systẹm"} {
		try(name, "Error: Username is reserved")
	}
	alice.close()
	r.finish()
}

func limCloseCodeLabels(t *testing.T) {
	r := newRig(t, Config{})
	scrape := func() string {
		resp, err := http.Get(r.s.base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	otherRe := regexp.MustCompile(`(?m)^gochat_disconnects_total\{code="other"\} (\S+)$`)
	other := func(s string) float64 {
		m := otherRe.FindStringSubmatch(s)
		if m == nil {
			t.Fatalf("no disconnects_total{code=\"other\"} series")
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	before := other(scrape())
	codes := make([]int, 50)
	for i := range codes {
		codes[i] = 3000 + i*40 + i%7 // 50 different codes in 3000–4999
	}
	for i, code := range codes {
		c := join(t, r.s.url, fmt.Sprintf("closer%d", i))
		if err := c.conn.Close(websocket.StatusCode(code), "bye"); err != nil {
			t.Logf("close %d: %v", code, err)
		}
	}
	eventually(t, 20*time.Second, "the 50 closers gone", func() bool { return r.s.nconns.Load() == 1 })
	out := scrape()
	for _, code := range codes {
		if strings.Contains(out, fmt.Sprintf(`code="%d"`, code)) {
			t.Errorf("/metrics has a series labelled with client close code %d", code)
		}
	}
	if got := other(out) - before; got != 50 {
		t.Errorf(`disconnects_total{code="other"} rose by %v, want 50`, got)
	}
	r.finish()
}

// ---- framing, admission, drain, presence ----------------------------------------

// A 125-byte ping between the fragments of a message of exactly
// -max-message bytes is answered with an identical pong and does not count
// against the message limit.
func limPingAtMaxMessage(t *testing.T) {
	const maxMsg = 16 << 10
	r := newRig(t, Config{MaxMessage: maxMsg})
	rc := r.rawJoin("pinger")
	content := "at the limit " + strings.Repeat("m", 1800)
	msg := paddedChat(content, maxMsg)
	ping := bytes.Repeat([]byte("P"), 125)
	var b []byte
	b = append(b, frame(false, 0, 1, true, msg[:maxMsg-10])...)
	b = append(b, frame(true, 0, 9, true, ping)...)
	b = append(b, frame(true, 0, 0, true, msg[maxMsg-10:])...)
	rc.write(b)
	gotPong, gotMsg := false, false
	for !gotPong || !gotMsg {
		op, p, err := rc.readFrame(10 * time.Second)
		if err != nil {
			t.Fatalf("pong %v, message %v, then %v", gotPong, gotMsg, err)
		}
		switch op {
		case 10:
			if !bytes.Equal(p, ping) {
				t.Errorf("pong payload %q, want the ping's", p)
			}
			gotPong = true
		case 8:
			t.Fatalf("closed with %d", binary.BigEndian.Uint16(p))
		case 1:
			if string(p) == fmt.Sprintf(`{"username":"pinger","content":%q}`, content) {
				gotMsg = true
			}
		}
	}
	r.ctl.until(chatMsg{"pinger", content}, 10*time.Second)
	r.finish()
}

// Two short backlog spikes seconds apart never add up to a sustained
// overload: the keeper samples the backlog between them.
func limOverloadSpikes(t *testing.T) {
	release := make(chan chan struct{}, 2)
	held := make(chan struct{}, 2)
	hook := func(p []byte) {
		if bytes.Contains(p, []byte("HOLD")) {
			ch := make(chan struct{})
			release <- ch
			held <- struct{}{}
			<-ch
		}
	}
	r := newRigOpts(t, Config{Workers: 1, OverloadQueue: 1}, rigOpts{hook: hook})
	shed0 := counterValue(r.s.metrics.shed)
	h := r.rawJoin("holder")
	var others []*rawConn
	for i := range 3 {
		others = append(others, r.rawJoin(fmt.Sprintf("q%d", i)))
	}
	spike := func(n int, upgrade bool) {
		t.Helper()
		h.write(textFrame(fmt.Sprintf(`{"content":"HOLD %d"}`, n)))
		<-held
		for i, o := range others {
			o.write(textFrame(fmt.Sprintf(`{"content":"spike %d from %d"}`, n, i)))
		}
		eventually(t, 10*time.Second, "a backlog past OverloadQueue", func() bool { return r.s.pool.Stats().Waiting >= 3 })
		late := r.dialRaw() // accepted in the spike: the backlog is seen deep
		eventually(t, 10*time.Second, "the late client accepted or shed", func() bool {
			return r.s.nconns.Load() == int64(2+len(others)+1) || counterValue(r.s.metrics.shed) > shed0
		})
		time.Sleep(100 * time.Millisecond) // a short spike, well inside the grace period
		close(<-release)
		if upgrade {
			late.write([]byte(upgradeRequest("/ws")))
			if code := late.status(); code != 101 {
				t.Errorf("spike %d: upgrade got %d, want 101 (a short spike sheds nobody)", n, code)
			}
		} else {
			// Leave without a request: no admission check sees the
			// backlog shallow again before the next spike; only the keeper.
			late.nc.Close()
		}
		for i := range others {
			r.ctl.until(chatMsg{fmt.Sprintf("q%d", i), fmt.Sprintf("spike %d from %d", n, i)}, 10*time.Second)
		}
	}
	spike(1, false)
	time.Sleep(overloadGrace + time.Second) // seconds apart, no admission in between
	spike(2, true)
	if got := counterValue(r.s.metrics.shed) - shed0; got != 0 {
		t.Errorf("%v connections shed by two short spikes", got)
	}
	r.finish()
}

// Shutdown waits only for the WebSocket clients it closes: connections
// that keep arriving during the drain never hold it up.
func limDrainWhileConnecting(t *testing.T) {
	ts, served := startUnmanaged(t)
	s := ts.Server
	for i := range 5 {
		newCtrl(t, ts.url, fmt.Sprintf("d%d", i))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var opened atomic.Int64
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := []byte(upgradeRequest("/ws"))
			for {
				select {
				case <-stop:
					return
				default:
				}
				nc, err := net.DialTimeout("tcp", s.Addr().String(), time.Second)
				if err != nil {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				opened.Add(1)
				// Half the head, a pause, the rest: always some request in flight.
				nc.SetDeadline(time.Now().Add(2 * time.Second))
				nc.Write(req[:len(req)/2])
				time.Sleep(200 * time.Millisecond)
				nc.Write(req[len(req)/2:])
				io.Copy(io.Discard, nc)
				nc.Close()
			}
		}()
	}
	eventually(t, 10*time.Second, "connections arriving", func() bool { return opened.Load() > 20 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.Shutdown(ctx)
	n := opened.Load()
	close(stop)
	wg.Wait()
	if err != nil {
		t.Errorf("Shutdown with connections arriving throughout: %v, want nil (drained)", err)
	}
	t.Logf("%d connections opened during the test", n)
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// summaryRe parses a presence notice: one name, two names, or two names
// and a count of others.
var summaryRe = regexp.MustCompile(`^(.+?)(?:(?:, (.+?) and ([0-9,]+) others?)| and (.+?))? (joined|left) the chat$`)

// presenceCount returns, for kind "joined" or "left", how many clients the
// notices in msgs tell of, and the names they name.
func presenceCount(t *testing.T, msgs []chatMsg, kind string) (total int, named []string) {
	t.Helper()
	for _, m := range msgs {
		if m.Username != "System" {
			continue
		}
		sm := summaryRe.FindStringSubmatch(m.Content)
		if sm == nil || sm[5] != kind {
			continue
		}
		switch {
		case sm[3] != "":
			k, err := strconv.Atoi(strings.ReplaceAll(sm[3], ",", ""))
			if err != nil {
				t.Fatalf("bad summary %q", m.Content)
			}
			total += 2 + k
			named = append(named, sm[1], sm[2])
		case sm[4] != "":
			total += 2
			named = append(named, sm[1], sm[4])
		default:
			total++
			named = append(named, sm[1])
		}
	}
	return total, named
}

func limPresenceSummaries(t *testing.T) {
	const storm = 30
	run := func(t *testing.T, summaryAt int) {
		r := newRig(t, Config{PresenceSummary: summaryAt})
		var observers []*ctrl
		for i := range 2 {
			observers = append(observers, newCtrl(t, r.s.url, fmt.Sprintf("obs%d", i)))
		}
		raw := r.rawJoin("rawobs") // byte-for-byte view
		for _, o := range observers {
			o.marker()
			o.resetHistory()
		}
		r.ctl.marker() // past the observers' joins
		names := make([]string, storm)
		clients := make([]*ctrl, storm)
		var wg sync.WaitGroup
		for i := range storm {
			names[i] = fmt.Sprintf("st%02d", i)
			wg.Add(1)
			go func() {
				defer wg.Done()
				k := dialCtrl(t, r.s.url, names[i])
				if err := k.trySend(fmt.Sprintf(`{"username":%q}`, names[i])); err != nil {
					t.Errorf("%s: %v", names[i], err)
				}
				clients[i] = k
			}()
		}
		wg.Wait()
		eventually(t, 20*time.Second, "every storm client joined", func() bool { return r.s.hub.Members() == storm+4 })
		ctlMsgs := r.ctl.marker()
		check := func(who string, msgs []chatMsg, kind string, exact bool, atLeast int) int {
			total, named := presenceCount(t, msgs, kind)
			seen := map[string]bool{}
			for _, n := range named {
				if seen[n] {
					t.Errorf("%s: %s named twice in %s notices", who, n, kind)
				}
				seen[n] = true
			}
			if exact && total != storm {
				t.Errorf("%s: told of %d clients that %s, want exactly %d", who, total, kind, storm)
			}
			if total > storm || total < atLeast {
				t.Errorf("%s: told of %d clients that %s, want %d..%d", who, total, kind, atLeast, storm)
			}
			return total
		}
		notices := 0
		for i, o := range append(observers, r.ctl) {
			msgs := ctlMsgs
			if i < len(observers) {
				msgs = o.marker()
			}
			check(o.name, msgs, "joined", true, storm)
			for _, m := range msgs {
				if m.Username == "System" && strings.HasSuffix(m.Content, " joined the chat") {
					notices++
				}
			}
		}
		// Each storm client is told of its own join and every later one.
		marker := fmt.Sprintf("m%d", r.ctl.n)
		var counts []int
		for i, k := range clients {
			msgs := k.until(chatMsg{"control", marker}, 20*time.Second)
			counts = append(counts, check(names[i], msgs, "joined", false, 1))
		}
		sort.Sort(sort.Reverse(sort.IntSlice(counts)))
		for i, c := range counts {
			if c < storm-i {
				t.Errorf("storm clients' join counts %v: the %d-th most is %d, so some client missed a later join", counts, i+1, c)
				break
			}
		}
		// The raw observer: per-user notices are byte for byte the original.
		rawJoins := 0
		for {
			op, p, err := raw.readFrame(10 * time.Second)
			if err != nil {
				t.Fatalf("raw observer: %v", err)
			}
			if op != 1 {
				continue
			}
			if string(p) == fmt.Sprintf(`{"username":"control","content":%q}`, marker) {
				break
			}
			var m chatMsg
			json.Unmarshal(p, &m)
			if summaryAt >= storm+4 && m.Username == "System" && strings.HasSuffix(m.Content, " joined the chat") {
				if string(p) != fmt.Sprintf(`{"username":"System","content":"st%s joined the chat"}`, strings.TrimPrefix(strings.TrimSuffix(m.Content, " joined the chat"), "st")) ||
					!regexp.MustCompile(`^st[0-9]{2}$`).MatchString(strings.TrimSuffix(m.Content, " joined the chat")) {
					t.Errorf("notice not byte for byte the original: %s", p)
				}
				rawJoins++
			}
		}
		if summaryAt >= storm+4 {
			if rawJoins != storm || notices != 3*storm {
				t.Errorf("with -presence-summary %d: %d notices at the raw observer, %d at three members, want one per user (%d, %d)", summaryAt, rawJoins, notices, storm, 3*storm)
			}
		} else if notices >= 3*storm {
			t.Errorf("with -presence-summary %d and %d members: %d join notices at three members, want summaries", summaryAt, storm+4, notices)
		}
		t.Logf("-presence-summary %d: %d join notices for %d joins at each of 3 members", summaryAt, notices/3, storm)
		// Leaves, likewise.
		for _, o := range append(observers, r.ctl) {
			o.resetHistory()
		}
		for _, k := range clients {
			go k.close()
		}
		eventually(t, 20*time.Second, "every storm client left", func() bool { return r.s.hub.Members() == 4 })
		for _, o := range append(observers, r.ctl) {
			check(o.name, o.marker(), "left", true, storm)
		}
		for _, o := range observers {
			o.close()
		}
		r.finish()
	}
	t.Run("N=3", func(t *testing.T) { run(t, 3) })
	t.Run("N=1000", func(t *testing.T) { run(t, 1000) })
}

// The one client allowed past -max-inbound (so that parked clients can
// finish) may not take that place and go silent: it is closed after a
// handshake timeout, and the parked clients' messages go through.
func TestInboundGrowerThatStallsIsClosed(t *testing.T) {
	r := newRig(t, Config{MaxMessage: 64 << 10, MaxContent: 60 << 10, MaxInbound: 64 << 10, HandshakeTimeout: 300 * time.Millisecond})
	content := strings.Repeat("v", 50<<10)
	hog, victim := r.rawJoin("hog"), r.rawJoin("victim")
	hogFrame := textFrame(fmt.Sprintf(`{"content":%q}`, strings.Repeat("h", 50<<10)))
	victimFrame := textFrame(fmt.Sprintf(`{"content":%q}`, content))
	// Each first part fits one 32 KiB read, so neither reads while over
	// the bound until the hog's next byte.
	hog.write(hogFrame[:30<<10])
	eventually(t, 10*time.Second, "hog's partial frame buffered", func() bool { return r.s.inbound.Load() > 0 })
	victim.write(victimFrame[:30<<10])
	eventually(t, 10*time.Second, "inbound over its bound", r.s.inboundOver)
	hog.write(hogFrame[30<<10 : 30<<10+1]) // read past the bound: hog takes the one place to grow
	eventually(t, 10*time.Second, "hog is the grower", func() bool { return r.s.grower.Load() != nil })
	victim.write(victimFrame[30<<10:]) // parked while hog holds the place, and hog goes silent
	if code := hog.readClose(); code != 1008 {
		t.Fatalf("stalled grower closed with %d, want 1008", code)
	}
	r.ctl.until(chatMsg{"victim", content}, 10*time.Second)
	if n := counterValue(r.s.metrics.timeouts.WithLabelValues("assembly")); n != 1 {
		t.Fatalf("assembly timeouts %v, want 1", n)
	}
	r.finish()
}

// After a burst of connections and a quiet spell, freed memory goes back
// to the OS once (the keeper's releaser), not while the server is busy.
func TestQuietServerReleasesMemoryOnce(t *testing.T) {
	s := startServer(t, Config{})
	before := counterValue(s.metrics.idleCollections)
	c := join(t, s.url, "storm")
	c.send(`{"content":"activity"}`)
	c.waitFor(chatMsg{"storm", "activity"})
	eventually(t, 10*time.Second, "memory released after the quiet spell", func() bool {
		return counterValue(s.metrics.idleCollections) > before
	})
	released := counterValue(s.metrics.idleCollections)
	time.Sleep(3 * quietRelease / 2) // still quiet: no second release
	if got := counterValue(s.metrics.idleCollections); got != released {
		t.Fatalf("released %v times in one quiet spell", got-before)
	}
}

// connSizeClass is the allocator's size class a Conn must fit: every idle
// client costs one, so a field that pushes it to the next class (224) costs
// 16 bytes per connection.
const connSizeClass = 208

func TestConnFitsItsSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(Conn{}); n > connSizeClass {
		t.Fatalf("Conn is %d bytes: over the %d-byte size class; reorder or shrink its fields", n, connSizeClass)
	}
}
