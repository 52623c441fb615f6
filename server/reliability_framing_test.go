package server

// RELIABILITY.md, framing (items 9-19).

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

func (r *rig) violate(name string, b []byte, want int) {
	r.t.Helper()
	rc := r.rawJoin(name)
	rc.write(b)
	if got := rc.readClose(); got != want {
		r.t.Errorf("%s: close %d, want %d", name, got, want)
	}
}

func rel09Unmasked(t *testing.T) {
	r := newRig(t, Config{})
	r.violate("plain", frame(true, 0, 1, false, []byte(`{"content":"unmasked"}`)), 1002)
	r.violate("plainping", frame(true, 0, 9, false, []byte("x")), 1002)
	seen := r.finish()
	expectLeftOnce(t, seen, "plain", "plainping")
	if countMsg(seen, chatMsg{"plain", "unmasked"}) != 0 {
		t.Error("unmasked message broadcast")
	}
}

func rel10RSVOpcodes(t *testing.T) {
	r := newRig(t, Config{})
	var names []string
	for _, rsv := range []byte{1, 2, 4, 7} {
		name := fmt.Sprintf("rsv%d", rsv)
		names = append(names, name)
		r.violate(name, frame(true, rsv, 1, true, []byte(`{"content":"rsv"}`)), 1002)
	}
	for _, op := range []byte{3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf} {
		name := fmt.Sprintf("op%x", op)
		names = append(names, name)
		r.violate(name, frame(true, 0, op, true, []byte("x")), 1002)
	}
	expectLeftOnce(t, r.finish(), names...)
}

func rel11BadControl(t *testing.T) {
	r := newRig(t, Config{})
	big := bytes.Repeat([]byte("p"), 126)
	r.violate("bigping", frame(true, 0, 9, true, big), 1002)
	r.violate("bigpong", frame(true, 0, 10, true, big), 1002)
	r.violate("bigclose", frame(true, 0, 8, true, append([]byte{3, 0xe8}, big...)), 1002)
	r.violate("fragping", frame(false, 0, 9, true, []byte("a")), 1002)
	r.violate("fragclose", frame(false, 0, 8, true, []byte{3, 0xe8}), 1002)
	expectLeftOnce(t, r.finish(), "bigping", "bigpong", "bigclose", "fragping", "fragclose")
}

func rel12BadContinuation(t *testing.T) {
	r := newRig(t, Config{})
	start := frame(false, 0, 1, true, []byte(`{"content":"a`))
	r.violate("orphan", frame(true, 0, 0, true, []byte(`{"content":"x"}`)), 1002)
	r.violate("newtext", append(append([]byte{}, start...), textFrame(`{"content":"b"}`)...), 1002)
	r.violate("newbinary", append(append([]byte{}, start...), frame(true, 0, 2, true, []byte("b"))...), 1002)
	seen := r.finish()
	expectLeftOnce(t, seen, "orphan", "newtext", "newbinary")
	for _, m := range seen {
		if m.Username != "System" && m.Username != "control" {
			t.Errorf("a broken message was broadcast: %+v", m)
		}
	}
}

func rel13Pings(t *testing.T) {
	r := newRig(t, Config{Rate: 1000, Burst: 1000, SendQueue: 4096})
	// A ping between the fragments of a message: identical pong, and the
	// message is still delivered.
	rc := r.rawJoin("pinger")
	var b []byte
	b = append(b, frame(false, 0, 1, true, []byte(`{"content":"frag`))...)
	b = append(b, frame(true, 0, 9, true, []byte("ping payload \x00\xff"))...)
	b = append(b, frame(true, 0, 0, true, []byte(`mented"}`))...)
	rc.write(b)
	op, p, err := rc.readFrame(5 * time.Second)
	if err != nil || op != 10 || string(p) != "ping payload \x00\xff" {
		t.Fatalf("got op %d %q %v, want the identical pong first", op, p, err)
	}
	rc.waitText(`{"username":"pinger","content":"fragmented"}`)
	r.ctl.until(chatMsg{"pinger", "fragmented"}, 10*time.Second)

	// Pongs never interleave with frames being written: 300 pings while 60
	// broadcasts flow; every frame the client reads is whole.
	var pings []byte
	for i := range 300 {
		pings = append(pings, frame(true, 0, 9, true, fmt.Appendf(nil, "p-%03d", i))...)
	}
	sent := make(chan error, 1)
	go func() {
		for i := range 60 {
			if err := r.ctl.trySend(fmt.Sprintf(`{"content":"b-%02d"}`, i)); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	rc.write(pings)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	var pongs, texts int
	for pongs < 300 || texts < 60 {
		op, p, err := rc.readFrame(10 * time.Second)
		if err != nil {
			t.Fatalf("after %d pongs and %d texts: %v", pongs, texts, err)
		}
		switch op {
		case 10:
			if want := fmt.Sprintf("p-%03d", pongs); string(p) != want {
				t.Fatalf("pong %q, want %q", p, want)
			}
			pongs++
		case 1:
			var m chatMsg
			if json.Unmarshal(p, &m) != nil {
				t.Fatalf("torn text frame %q", p)
			}
			if m.Username == "control" && strings.HasPrefix(m.Content, "b-") {
				if want := fmt.Sprintf("b-%02d", texts); m.Content != want {
					t.Fatalf("broadcast %q, want %q", m.Content, want)
				}
				texts++
			}
		default:
			t.Fatalf("unexpected frame op %d %q", op, p)
		}
	}
	r.ctl.until(chatMsg{"control", "b-59"}, 10*time.Second)

	// A ping flood from a client that never reads its pongs is bounded by the
	// send queue: it is closed 1008 like any slow consumer.
	slow := r.counterSlow()
	fl := r.joinOn(r.dialRawSmall(), "flooder")
	var flood []byte
	for range 1000 {
		flood = append(flood, frame(true, 0, 9, true, bytes.Repeat([]byte("f"), 125))...)
	}
	evicted := false
	for i := 0; i < 500 && !evicted; i++ {
		fl.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := fl.nc.Write(flood); err != nil {
			break
		}
		evicted = r.counterSlow() > slow
	}
	eventually(t, 10*time.Second, "the ping flooder to be evicted", func() bool { return r.counterSlow() > slow })
	if max := maxPendingOut(r.s.Server); max > 4096+1024 {
		t.Errorf("pending output %d bytes: the pong backlog is not bounded by the send queue", max)
	}
	if code := fl.readClose(); code != 1008 {
		t.Errorf("ping flooder closed with %d, want 1008", code)
	}
	expectLeftOnce(t, r.finish(), "flooder")
}

func (r *rig) counterSlow() float64 { return counterValue(r.s.metrics.slowConsumers) }

func rel14UTF8(t *testing.T) {
	r := newRig(t, Config{})
	r.violate("bad1", textFrame("{\"content\":\"\xff\"}"), 1007)
	r.violate("truncated", textFrame("{\"content\":\"ab\xe2\x82"), 1007)
	r.violate("surrogate", textFrame("{\"content\":\"\xed\xa0\x80\"}"), 1007)
	r.violate("overlong", textFrame("{\"content\":\"\xc0\xaf\"}"), 1007)
	r.violate("splitbad", append(frame(false, 0, 1, true, []byte("{\"content\":\"\xe2\x82")),
		frame(true, 0, 0, true, []byte("\x28\"}"))...), 1007)
	// Invalid already in the first fragment: closed without waiting for more.
	r.violate("earlybad", frame(false, 0, 1, true, []byte("{\"content\":\"\xff")), 1007)
	r.violate("endsplit", append(frame(false, 0, 1, true, []byte("{\"content\":\"a\"}")),
		frame(true, 0, 0, true, []byte("\xe2\x82"))...), 1007)

	// Valid characters split across fragments are accepted.
	ok := r.rawJoin("splitter")
	var b []byte
	b = append(b, frame(false, 0, 1, true, []byte("{\"content\":\"price \xe2\x82"))...)
	b = append(b, frame(false, 0, 0, true, []byte("\xac \xf0"))...)
	b = append(b, frame(false, 0, 0, true, []byte("\x9f"))...)
	b = append(b, frame(true, 0, 0, true, []byte("\x98\x80\"}"))...)
	ok.write(b)
	r.ctl.until(chatMsg{"splitter", "price € 😀"}, 10*time.Second)
	ok.nc.Close()
	expectLeftOnce(t, r.finish(), "bad1", "truncated", "surrogate", "overlong", "splitbad", "earlybad", "endsplit", "splitter")
}

func rel15Binary(t *testing.T) {
	r := newRig(t, Config{})
	r.violate("bin", frame(true, 0, 2, true, []byte(`{"content":"binary secret"}`)), 1003)
	r.violate("binfrag", frame(false, 0, 2, true, []byte(`{"content":"binary secret"}`)), 1003)
	seen := r.finish()
	expectLeftOnce(t, seen, "bin", "binfrag")
	for _, m := range seen {
		if strings.Contains(m.Content, "binary secret") {
			t.Errorf("binary data broadcast: %+v", m)
		}
	}
}

func rel16HugeLength(t *testing.T) {
	r := newRig(t, Config{})
	for _, n := range []uint64{1 << 40, 1 << 62, 1<<63 + 5, 1<<64 - 1, 1<<16 + 1} {
		name := fmt.Sprintf("len%x", n)
		rc := r.rawJoin(name)
		h := []byte{0x81, 0x80 | 127}
		h = binary.BigEndian.AppendUint64(h, n)
		h = append(h, 1, 2, 3, 4) // mask; no body follows
		alloc0 := totalAlloc()
		t0 := time.Now()
		rc.write(h)
		code := rc.readClose()
		took, grew := time.Since(t0), int64(totalAlloc()-alloc0)
		if code != 1009 {
			t.Errorf("declared %d: close %d, want 1009", n, code)
		}
		timingBound(t, took > 2*time.Second, "declared %d: 1009 took %v, want at once", n, took)
		if grew > 1<<20 {
			t.Errorf("declared %d: %d KiB allocated", n, grew>>10)
		}
		t.Logf("declared %d: %d after %v, %d KiB allocated meanwhile", n, code, took, grew>>10)
	}
	r.finish()
}

func rel17TenMiB(t *testing.T) {
	r := newRig(t, Config{})
	heap0 := heapAlloc()
	rc := r.rawJoin("big")
	const size = 10 << 20
	h := []byte{0x81, 0x80 | 127}
	h = binary.BigEndian.AppendUint64(h, size)
	h = append(h, 9, 8, 7, 6)
	alloc0 := totalAlloc()
	done := make(chan int)
	go func() { // stream the body from one buffer while the server answers
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		rc.nc.SetWriteDeadline(time.Now().Add(20 * time.Second))
		written, err := rc.nc.Write(h)
		for err == nil && written < size {
			var n int
			n, err = rc.nc.Write(chunk)
			written += n
		}
		done <- written
	}()
	if code := rc.readClose(); code != 1009 {
		t.Errorf("10 MiB frame: close %d, want 1009", code)
	}
	rc.nc.Close()
	written := <-done
	grew := int64(totalAlloc() - alloc0)
	t.Logf("client wrote %d bytes; heap allocated meanwhile %d KiB", written, grew>>10)
	if grew > 4<<20 {
		t.Errorf("%d MiB allocated for a 10 MiB frame: allocation follows the declared length", grew>>20)
	}
	expectLeftOnce(t, r.finish(), "big")
	if heap := heapAlloc(); heap > heap0+2<<20 {
		t.Errorf("heap %d KiB after, %d KiB before", heap>>10, heap0>>10)
	}
}

func rel18FragmentCap(t *testing.T) {
	r := newRig(t, Config{})
	send := func(name string, b []byte) {
		rc := r.rawJoin(name)
		go func() { // the server stops listening long before the end
			rc.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
			rc.nc.Write(b)
		}()
		if code := rc.readClose(); code != 1009 {
			t.Errorf("%s: close %d, want 1009", name, code)
		}
	}
	tiny := frame(false, 0, 1, true, []byte(`{"content":"`))
	one := frame(false, 0, 0, true, []byte("a"))
	for range 100000 {
		tiny = append(tiny, one...)
	}
	send("tiny", tiny)
	empty := frame(false, 0, 1, true, nil)
	none := frame(false, 0, 0, true, nil)
	for range 20000 {
		empty = append(empty, none...)
	}
	send("empty", empty)
	expectLeftOnce(t, r.finish(), "tiny", "empty")
}

func rel19Close(t *testing.T) {
	r := newRig(t, Config{})
	// Close 1000: echoed, then the server ends the TCP connection.
	rc := r.rawJoin("polite")
	rc.write(frame(true, 0, 8, true, append([]byte{0x03, 0xe8}, "bye"...)))
	op, p, err := rc.readFrame(5 * time.Second)
	if err != nil || op != 8 || len(p) < 2 || binary.BigEndian.Uint16(p) != 1000 {
		t.Fatalf("close echo: op %d %q %v", op, p, err)
	}
	if _, _, err := rc.readFrame(5 * time.Second); err != io.EOF {
		t.Errorf("after the close echo: %v, want EOF", err)
	}
	// An empty close body is answered 1000 too.
	empty := r.rawJoin("quiet")
	empty.write(frame(true, 0, 8, true, nil))
	if code := empty.readClose(); code != 1000 {
		t.Errorf("empty close: echo %d, want 1000", code)
	}
	names := []string{"polite", "quiet"}
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"onebyte", []byte{0x03}},
		{"c1005", []byte{0x03, 0xed}},
		{"c1006", []byte{0x03, 0xee}},
		{"c1015", []byte{0x03, 0xf7}},
		{"c999", []byte{0x03, 0xe7}},
		{"c5000", []byte{0x13, 0x88}},
		{"c1004", []byte{0x03, 0xec}},
		{"badutf8", []byte{0x03, 0xe8, 0xff, 0xfe}},
	} {
		names = append(names, tc.name)
		r.violate(tc.name, frame(true, 0, 8, true, tc.body), 1002)
	}
	expectLeftOnce(t, r.finish(), names...)
}
