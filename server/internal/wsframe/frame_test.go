package wsframe

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/gobwas/ws"
)

// clientFrame builds a client frame (masked unless told otherwise), as an
// independent reference for the parser.
func clientFrame(fin bool, rsv, op byte, masked bool, payload []byte) []byte {
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

func TestParseHeaderNamesEveryViolation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    []byte
		max   int64
		ok    bool
		cause *CloseCause
	}{
		{"text frame", clientFrame(true, 0, 1, true, []byte("hi")), 100, true, nil},
		{"16-bit length", clientFrame(true, 0, 1, true, make([]byte, 300)), 1000, true, nil},
		{"64-bit length", clientFrame(true, 0, 1, true, make([]byte, 70000)), 100000, true, nil},
		{"one byte is incomplete", []byte{0x81}, 100, false, nil},
		{"partial extended length is incomplete", []byte{0x81, 0xfe, 0x00}, 100, false, nil},
		{"unmasked", clientFrame(true, 0, 1, false, []byte("x")), 100, false, ErrUnmasked},
		{"rsv1", clientFrame(true, 4, 1, true, nil), 100, false, ErrReservedBits},
		{"reserved opcode", clientFrame(true, 0, 3, true, nil), 100, false, ErrReservedOpCode},
		{"fragmented ping", clientFrame(false, 0, 9, true, nil), 100, false, ErrBadControlFrame},
		{"126-byte ping", clientFrame(true, 0, 9, true, make([]byte, 126)), 1000, false, ErrBadControlFrame},
		{"data frame over the limit", clientFrame(true, 0, 1, true, make([]byte, 101)), 100, false, ErrTooBig},
		{"2^40 declared, no body", append(binary.BigEndian.AppendUint64([]byte{0x81, 0xff}, 1<<40), 1, 2, 3, 4), 100, false, ErrTooBig},
		{"2^63 declared", append(binary.BigEndian.AppendUint64([]byte{0x81, 0xff}, 1<<63), 1, 2, 3, 4), 100, false, ErrTooBig},
		// A control frame never counts against the data limit: a ping in the
		// middle of a message that has used up the limit is still a ping.
		{"125-byte ping with no data budget left", clientFrame(true, 0, 9, true, make([]byte, 125)), 0, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, ok, cause := ParseHeader(tc.in, tc.max)
			if ok != tc.ok || cause != tc.cause {
				t.Fatalf("ok=%v cause=%+v, want ok=%v cause=%+v", ok, cause, tc.ok, tc.cause)
			}
			if ok && h.Size+int(h.Length) != len(tc.in) {
				t.Fatalf("header %d + payload %d != frame %d", h.Size, h.Length, len(tc.in))
			}
		})
	}
}

func TestAppendFrameAndAppendFramedAgree(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 70000} {
		payload := bytes.Repeat([]byte("x"), n)
		want := AppendFrame([]byte("prefix"), ws.OpText, payload)
		got := AppendFramed([]byte("prefix"), ws.OpText, func(b []byte) []byte { return append(b, payload...) })
		if !bytes.Equal(got, want) {
			t.Fatalf("n=%d: AppendFramed differs from AppendFrame", n)
		}
		// gobwas/ws, independently, reads the header we wrote.
		h, err := ws.ReadHeader(bytes.NewReader(want[len("prefix"):]))
		if err != nil || !h.Fin || h.OpCode != ws.OpText || h.Length != int64(n) || h.Masked {
			t.Fatalf("n=%d: gobwas reads %+v, %v", n, h, err)
		}
	}
}

func TestCheckClosePayload(t *testing.T) {
	code := func(c uint16, reason string) []byte { return append(binary.BigEndian.AppendUint16(nil, c), reason...) }
	for _, tc := range []struct {
		name string
		in   []byte
		echo ws.StatusCode
		ok   bool
	}{
		{"empty echoes 1000", nil, 1000, true},
		{"1000", code(1000, "bye"), 1000, true},
		{"4000 application code", code(4000, ""), 4000, true},
		{"one byte", []byte{3}, 0, false},
		{"1005 may not be sent", code(1005, ""), 0, false},
		{"1006 may not be sent", code(1006, ""), 0, false},
		{"1015 may not be sent", code(1015, ""), 0, false},
		{"999", code(999, ""), 0, false},
		{"5000", code(5000, ""), 0, false},
		{"invalid utf-8 reason", code(1000, "\xff"), 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			echo, ok := CheckClosePayload(tc.in)
			if echo != tc.echo || ok != tc.ok {
				t.Fatalf("got %d %v, want %d %v", echo, ok, tc.echo, tc.ok)
			}
		})
	}
}

func TestPeerCloseLabelsApplicationCodesAsOne(t *testing.T) {
	if l := PeerClose(1000).Label; l != "1000" {
		t.Fatalf("1000 labelled %q", l)
	}
	seen := map[string]bool{}
	for c := ws.StatusCode(3000); c <= 4999; c++ {
		seen[PeerClose(c).Label] = true
	}
	if len(seen) != 1 || !seen["other"] {
		t.Fatalf("application close codes create labels %v; want only \"other\"", seen)
	}
}

func TestAppendCloseCarriesCodeAndFixedReason(t *testing.T) {
	f := AppendClose(nil, ErrTooBig)
	h, err := ws.ReadHeader(bytes.NewReader(f))
	if err != nil || h.OpCode != ws.OpClose {
		t.Fatalf("%+v %v", h, err)
	}
	p := f[len(f)-int(h.Length):]
	if binary.BigEndian.Uint16(p) != 1009 || string(p[2:]) != "message too big" {
		t.Fatalf("payload %q", p)
	}
}

func TestUTF8CheckerAcrossFragments(t *testing.T) {
	smile := "\U0001F600" // 4 bytes
	for _, tc := range []struct {
		name  string
		frags []string
		ok    bool
	}{
		{"ascii", []string{"ab", "cd"}, true},
		{"character split across fragments", []string{"a" + smile[:1], smile[1:3], smile[3:] + "b"}, true},
		{"invalid byte in the middle fragment", []string{"ab", "\xff", "cd"}, false},
		{"truncated at the end", []string{"ab", smile[:2]}, false},
		{"overlong in one fragment", []string{"\xc0\xaf"}, false},
		{"surrogate split", []string{"\xed", "\xa0\x80"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var u UTF8Checker
			var msg []byte
			ok := true
			for i, f := range tc.frags {
				msg = append(msg, f...)
				if !u.Check(msg, i == len(tc.frags)-1) {
					ok = false
					break
				}
			}
			if ok != tc.ok {
				t.Fatalf("got %v, want %v", ok, tc.ok)
			}
		})
	}
}

// The checker looks at each byte a bounded number of times, however the
// message is fragmented (RELIABILITY 49): count the bytes it validates.
func TestUTF8CheckerIsLinearInTheMessage(t *testing.T) {
	var u UTF8Checker
	var msg []byte
	checked := 0
	frag := bytes.Repeat([]byte("é"), 8) // 16 bytes, two-byte characters
	for i := range 1024 {
		before := u.valid
		msg = append(msg, frag...)
		if !u.Check(msg, i == 1023) {
			t.Fatal("valid text refused")
		}
		checked += len(msg) - before
	}
	if checked > 2*len(msg) {
		t.Fatalf("validated %d bytes for a %d-byte message", checked, len(msg))
	}
}

// FuzzParseHeader: ParseHeader never panics, its results are self-consistent,
// and a header that arrives in two pieces parses exactly as when whole: the
// prefix is either reported incomplete or gives the identical result.
func FuzzParseHeader(f *testing.F) {
	for _, seed := range [][]byte{
		clientFrame(true, 0, 1, true, []byte(`{"content":"hi"}`)),
		clientFrame(false, 0, 1, true, []byte("part")),
		clientFrame(true, 0, 0, true, nil),
		clientFrame(true, 0, 9, true, []byte("ping")),
		clientFrame(true, 0, 8, true, []byte{3, 0xe8}),
		clientFrame(true, 0, 1, true, bytes.Repeat([]byte("a"), 200)),
		clientFrame(true, 0, 1, true, bytes.Repeat([]byte("a"), 70000)),
		clientFrame(true, 0, 1, false, []byte("unmasked")),
		clientFrame(true, 4, 1, true, []byte("rsv1")),
		clientFrame(true, 0, 3, true, nil),
		clientFrame(false, 0, 9, true, nil),
		binary.BigEndian.AppendUint64([]byte{0x81, 0xff}, 1<<40),
		binary.BigEndian.AppendUint64([]byte{0x81, 0xff}, 1<<63),
		{0x81, 0xfe, 0x00},
		{0x81},
		{},
	} {
		f.Add(seed[:min(len(seed), 64)], uint(3), int64(16<<10))
	}
	f.Fuzz(func(t *testing.T, b []byte, split uint, maxPayload int64) {
		if maxPayload < 0 {
			maxPayload = -maxPayload
		}
		h, ok, cause := ParseHeader(b, maxPayload)
		if ok && cause != nil {
			t.Fatalf("ok with cause %+v", cause)
		}
		if ok {
			switch {
			case h.Size > len(b) || h.Size < 6 || h.Size > 14:
				t.Fatalf("header size %d of %d bytes", h.Size, len(b))
			case b[1]&0x80 == 0:
				t.Fatal("unmasked frame accepted")
			case h.Length < 0 || (!h.Op.IsControl() && h.Length > maxPayload):
				t.Fatalf("length %d over max %d", h.Length, maxPayload)
			case h.Op.IsControl() && (!h.Fin || h.Length > MaxControlPayload):
				t.Fatalf("bad control frame accepted: %+v", h)
			case !validOpCode(h.Op) || b[0]&0x70 != 0:
				t.Fatalf("reserved opcode or RSV accepted: %+v", h)
			}
			if !bytes.Equal(h.Mask[:], b[h.Size-4:h.Size]) {
				t.Fatal("mask not taken from the header")
			}
		}
		if cause != nil && cause.Code != ws.StatusProtocolError && cause.Code != ws.StatusMessageTooBig {
			t.Fatalf("unexpected cause %+v", cause)
		}
		k := int(split % uint(len(b)+1))
		ph, pok, pcause := ParseHeader(b[:k], maxPayload)
		incomplete := !pok && pcause == nil
		if !incomplete && (ph != h || pok != ok || pcause != cause) {
			t.Fatalf("prefix of %d/%d bytes: %+v %v %+v; whole: %+v %v %+v", k, len(b), ph, pok, pcause, h, ok, cause)
		}
		if incomplete && ok && k >= h.Size {
			t.Fatalf("prefix of %d bytes holds the whole %d-byte header but is reported incomplete", k, h.Size)
		}
	})
}

func TestFrameEndFindsTheBoundaryAfterAPartialWrite(t *testing.T) {
	var frames []byte
	var ends []int
	for _, n := range []int{3, 200, 70000, 0, 10} {
		frames = AppendFrame(frames, ws.OpText, bytes.Repeat([]byte("x"), n))
		ends = append(ends, len(frames))
	}
	start := 0
	for _, end := range ends {
		for n := start + 1; n <= end; n++ {
			if got := FrameEnd(frames, n); got != end {
				t.Fatalf("FrameEnd(%d) = %d, want %d", n, got, end)
			}
		}
		if got := FrameEnd(frames, start); got != start {
			t.Fatalf("FrameEnd(%d) = %d at a boundary", start, got)
		}
		start = end
	}
}

func TestPayloadSkipsTheHeader(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		p := bytes.Repeat([]byte("x"), n)
		if got := Payload(AppendFrame(nil, ws.OpText, p)); !bytes.Equal(got, p) {
			t.Errorf("payload of %d bytes: got %d bytes", n, len(got))
		}
	}
}
