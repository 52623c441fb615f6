package server

import (
	"bytes"
	"strings"
	"testing"
)

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
		out, err := up.upgrade() // what Server.handshake runs and sends
		if err == nil {
			s.wsConns.Add(-1) // admitted: give the slot and the room back
			s.hub.Release(up.admitted)
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
