package server

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// FuzzParseHeader: parseHeader never panics, its results are self-consistent,
// and a header that arrives in two pieces parses exactly as when whole: the
// prefix is either reported incomplete or gives the identical result.
func FuzzParseHeader(f *testing.F) {
	for _, seed := range [][]byte{
		frame(true, 0, 1, true, []byte(`{"content":"hi"}`)),
		frame(false, 0, 1, true, []byte("part")),
		frame(true, 0, 0, true, nil),
		frame(true, 0, 9, true, []byte("ping")),
		frame(true, 0, 8, true, []byte{3, 0xe8}),
		frame(true, 0, 1, true, bytes.Repeat([]byte("a"), 200)),   // 16-bit length
		frame(true, 0, 1, true, bytes.Repeat([]byte("a"), 70000)), // 64-bit length
		frame(true, 0, 1, false, []byte("unmasked")),
		frame(true, 4, 1, true, []byte("rsv1")),
		frame(true, 0, 3, true, nil),
		frame(false, 0, 9, true, nil),
		binary.BigEndian.AppendUint64([]byte{0x81, 0xff}, 1<<40),
		binary.BigEndian.AppendUint64([]byte{0x81, 0xff}, 1<<63),
		{0x81, 0xfe, 0x00},
		{0x81},
		{},
	} {
		f.Add(seed[:min(len(seed), 64)], uint(3), int64(DefaultMaxMessage))
	}
	f.Fuzz(func(t *testing.T, b []byte, split uint, maxPayload int64) {
		if maxPayload < 0 {
			maxPayload = -maxPayload
		}
		h, ok, code := parseHeader(b, maxPayload)
		if ok && code != 0 {
			t.Fatalf("ok with code %d", code)
		}
		if ok {
			switch {
			case h.size > len(b) || h.size < 6 || h.size > 14:
				t.Fatalf("header size %d of %d bytes", h.size, len(b))
			case !h.masked:
				t.Fatal("unmasked frame accepted")
			case h.length < 0 || h.length > maxPayload:
				t.Fatalf("length %d over max %d", h.length, maxPayload)
			case h.op.IsControl() && (!h.fin || h.length > 125):
				t.Fatalf("bad control frame accepted: %+v", h)
			case !validOpCode(h.op) || b[0]&0x70 != 0:
				t.Fatalf("reserved opcode or RSV accepted: %+v", h)
			}
			if !bytes.Equal(h.mask[:], b[h.size-4:h.size]) {
				t.Fatal("mask not taken from the header")
			}
		}
		if code != 0 && code != ws.StatusProtocolError && code != ws.StatusMessageTooBig {
			t.Fatalf("unexpected code %d", code)
		}
		k := int(split % uint(len(b)+1))
		ph, pok, pcode := parseHeader(b[:k], maxPayload)
		incomplete := !pok && pcode == 0
		if !incomplete && (ph != h || pok != ok || pcode != code) {
			t.Fatalf("prefix of %d/%d bytes: %+v %v %d; whole: %+v %v %d", k, len(b), ph, pok, pcode, h, ok, code)
		}
		if incomplete && ok && k >= h.size {
			t.Fatalf("prefix of %d bytes holds the whole %d-byte header but is reported incomplete", k, h.size)
		}
	})
}

// FuzzParseClientMsg: parseClientMsg never panics, and whatever it accepts
// encoding/json (the oracle) accepts too, with the same field values.
func FuzzParseClientMsg(f *testing.F) {
	for _, seed := range []string{
		`{"username":"alice","content":"Hello!"}`,
		`{"content":"How is everyone?"}`,
		`{"username":"System","content":"x"}`,
		` { "username" : "a\"b\\c\/d\b\f\n\r\t" , "content" : "\u00e9\ud83d\ude00\ud800\udc00" } `,
		`{"username":"\ud800","content":"\udc00\ud800x"}`,
		`{"username":null,"content":null}`,
		`{"username":"a","username":"b"}`,
		`{"username":"a","username":null}`,
		`{"content":123}`,
		`{"content":[[[[[]]]]]}`,
		`{"extra":1}`,
		`{"Username":"a"}`,
		`{}`, `null`, `[]`, `"x"`, `{`, `{"content":"x"} x`, `{"content":"\u12"}`,
		"{\"content\":\"\x01\"}",
		`{"username":"é","content":"<script>"}`,
	} {
		f.Add([]byte(seed))
	}
	var scratch []byte
	f.Fuzz(func(t *testing.T, b []byte) {
		m, s, err := parseClientMsg(b, scratch)
		scratch = s
		if err != nil || !utf8.Valid(b) { // the frame layer rejects invalid UTF-8 first
			return
		}
		var want struct{ Username, Content *string }
		if jerr := json.Unmarshal(b, &want); jerr != nil {
			t.Fatalf("parser accepted %q, encoding/json refuses it: %v", b, jerr)
		}
		check := func(field string, has bool, got []byte, want *string) {
			if has != (want != nil) || (want != nil && string(got) != *want) {
				t.Fatalf("%q: %s = (%v, %q), encoding/json says %v", b, field, has, got, deref(want))
			}
		}
		check("username", m.hasUsername, m.username, want.Username)
		check("content", m.hasContent, m.content, want.Content)
	})
}

func deref(p *string) any {
	if p == nil {
		return nil
	}
	return *p
}

// FuzzHandshakeHead feeds arbitrary bytes, as the reactor would cut them
// into a request head, to the /ws upgrade path: the upgrader never panics
// and always answers, with 101 or a 4xx/5xx status.
func FuzzHandshakeHead(f *testing.F) {
	for _, seed := range []string{
		upgradeRequest("/ws"),
		upgradeRequest("/ws?x=1", "Origin: http://127.0.0.1"),
		upgradeRequest("/ws", "Origin: null"),
		upgradeRequest("/ws", "Sec-WebSocket-Extensions: permessage-deflate"),
		upgradeRequest("/ws", "Sec-WebSocket-Protocol: chat"),
		strings.Replace(upgradeRequest("/ws"), "GET", "POST", 1),
		strings.Replace(upgradeRequest("/ws"), "HTTP/1.1", "HTTP/1.0", 1),
		strings.Replace(upgradeRequest("/ws"), "HTTP/1.1", "HTTP/2.0", 1),
		strings.Replace(upgradeRequest("/ws"), "Version: 13", "Version: 8", 1),
		strings.Replace(upgradeRequest("/ws"), "Upgrade: websocket", "Upgrade: h2c", 1),
		"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /ws\r\n\r\n",
		"GET /ws HTTP/1.1\nHost: x\n\n\r\n\r\n",
		"GET /ws HTTP/1.1\r\nno colon\r\n\r\n",
		"GET /ws HTTP/1.1\r\n: empty name\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: " + strings.Repeat("h", 9000) + "\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	s := startServer(f, Config{Origins: []string{"https://chat.example.com"}})
	f.Fuzz(func(t *testing.T, b []byte) {
		// Cut as Conn.consume does: up to the first blank line, capped.
		end := bytes.Index(b, []byte("\r\n\r\n"))
		if end < 0 {
			b = append(b, "\r\n\r\n"...)
			end = bytes.Index(b, []byte("\r\n\r\n"))
		}
		head := b[:end+4]
		if len(head) > maxHandshake || !isWebSocketPath(head) {
			return // 431, or handed to net/http
		}
		up := upgraders.Get().(*upgrader)
		defer upgraders.Put(up)
		up.reset(s.Server, head)
		err := up.upgrade() // what Server.handshake runs and sends
		out := up.out
		if err == nil {
			s.wsConns.Add(-1) // admitted: give the slot back
		}
		status := statusOf(out)
		switch {
		case err == nil && status != 101:
			t.Fatalf("upgraded with status %d: %q", status, out)
		case err != nil && (status < 400 || status > 599):
			t.Fatalf("rejected (%v) with status %d: %q", err, status, out)
		}
	})
}

// statusOf parses "HTTP/1.1 NNN ..." or returns 0.
func statusOf(resp []byte) int {
	rest, ok := bytes.CutPrefix(resp, []byte("HTTP/1.1 "))
	if !ok || len(rest) < 4 || rest[3] != ' ' {
		return 0
	}
	n := 0
	for _, c := range rest[:3] {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int(c-'0')
	}
	return n
}
