package server

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"gochat/server/internal/chat"
	"gochat/server/internal/chatmsg"
)

// handshake routes a complete HTTP request head read by the reactor: /ws is
// upgraded in place by gobwas/ws (no net/http, no per-connection buffers);
// anything else is handed to net/http. rest holds bytes that followed the
// head (a frame pipelined with the handshake). It reports whether c is now a
// WebSocket connection.
func (s *Server) handshake(c *Conn, head, rest []byte) bool {
	if !isWebSocketPath(head) {
		s.handoff(c, head, rest)
		return false
	}
	up := upgraders.Get().(*upgrader)
	defer upgraders.Put(up)
	up.reset(s, head)
	resp, err := up.upgrade()
	c.wmu.Lock()
	c.writeFixedLocked(resp)
	c.wmu.Unlock()
	if err != nil {
		c.teardown()
		return false
	}
	c.upgraded = true
	c.sess.Attach(up.admitted, up.opts)
	up.admitted = nil
	s.metrics.upgrades.Inc()
	c.deadline.Store(time.Now().Add(s.cfg.JoinTimeout).UnixNano())
	c.phase.Store(uint32(phaseJoining))
	s.log.LogAttrs(context.Background(), slog.LevelDebug, "upgrade", slog.Int("fd", int(c.fd))) // no boxing of fd per connection while debug is off
	return true
}

// isWebSocketPath reports whether the request line targets /ws (any method:
// gobwas answers a wrong method or a plain GET with the right 4xx).
func isWebSocketPath(head []byte) bool {
	path, _ := requestTarget(head)
	return string(path) == "/ws"
}

// requestTarget splits the request line's target into path and query.
func requestTarget(head []byte) (path, query []byte) {
	sp := bytes.IndexByte(head, ' ')
	if sp < 0 {
		return nil, nil
	}
	uri := head[sp+1:]
	if end := bytes.IndexAny(uri, " \r"); end >= 0 {
		uri = uri[:end]
	}
	path, query, _ = bytes.Cut(uri, []byte("?"))
	return path, query
}

// upgrader carries one upgrade through gobwas's callbacks. Pooled, so our
// side of an upgrade allocates nothing once warm; the one allocation left
// is gobwas's Sec-WebSocket-Accept buffer (BenchmarkUpgrade).
type upgrader struct {
	u      ws.Upgrader
	s      *Server
	r      bytes.Reader
	out    []byte
	host   []byte
	origin []byte
	hasOrg bool
	// What the client asked for (SPEC §8): its room, its replay, gochat.v2.
	room     []byte
	opts     chat.Options
	admitted *chat.Room // acquired by admit; handed to the session
}

var upgraders = sync.Pool{New: func() any {
	up := &upgrader{}
	up.u = ws.Upgrader{
		ReadBufferSize:  maxHandshake + 512,
		WriteBufferSize: 512,
		OnRequest:       func(uri []byte) error { return up.parseQuery(uri) },
		Protocol: func(p []byte) bool {
			up.opts.V2 = up.opts.V2 || string(p) == subprotocolV2
			return string(p) == subprotocolV2
		},
		OnHost: func(host []byte) error {
			up.host = append(up.host[:0], host...)
			return nil
		},
		OnHeader: func(key, value []byte) error {
			if bytes.EqualFold(key, []byte("Origin")) {
				up.origin = append(up.origin[:0], value...)
				up.hasOrg = true
			}
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) { return nil, up.admit() },
		// No Negotiate: permessage-deflate and every other extension is
		// declined by leaving Sec-WebSocket-Extensions out of the response.
	}
	return up
}}

func (up *upgrader) reset(s *Server, head []byte) {
	up.s = s
	up.r.Reset(head)
	up.out = up.out[:0]
	up.host = up.host[:0]
	up.origin = up.origin[:0]
	up.hasOrg = false
	up.room = append(up.room[:0], chatmsg.DefaultRoom...)
	up.opts = chat.Options{}
	up.admitted = nil
}

// upgrade runs gobwas's handshake on the head given to reset and returns
// the response to send, counting a refusal.
func (up *upgrader) upgrade() (response []byte, err error) {
	_, err = up.u.Upgrade(up)
	switch {
	case err == nil, err == rejectForbidden, err == rejectUnavailable, err == rejectRoomLimit:
		// Upgraded, or refused by admit, which counted it.
	case err == rejectRoomName, err == rejectHistory, err == rejectSince, err == rejectSinceV1:
		// A bad query: gobwas wrote 400 with the reason.
		up.s.metrics.handshakeRejects.Inc()
	case err == ws.ErrHandshakeUpgradeRequired:
		// gobwas's 426 names the version it wants.
		up.s.metrics.handshakeRejects.Inc()
	default:
		// Every other malformed upgrade gets 400 (RELIABILITY 1): gobwas
		// answers a wrong method with 405, HTTP/1.0 with 505, and an
		// unparsable request line with nothing at all.
		response400.count(up.s.metrics)
		return response400.bytes, err
	}
	return up.out, err
}

func (up *upgrader) Read(p []byte) (int, error)  { return up.r.Read(p) }
func (up *upgrader) Write(p []byte) (int, error) { up.out = append(up.out, p...); return len(p), nil }

// admit decides, after a valid handshake, whether this client may connect.
func (up *upgrader) admit() error {
	s := up.s
	if up.hasOrg && !s.originAllowed(up.origin, up.host) {
		s.metrics.originRejects.Inc()
		return rejectForbidden
	}
	if s.draining.Load() || int(s.wsConns.Load()) >= s.cfg.MaxConns || s.overloaded() {
		s.metrics.shed.Inc()
		return rejectUnavailable
	}
	room, err := s.hub.Acquire(up.room)
	if err != nil {
		s.metrics.shed.Inc()
		return rejectRoomLimit
	}
	if up.opts.Resume && !up.opts.V2 {
		s.hub.Release(room)
		return rejectSinceV1
	}
	up.admitted = room
	s.wsConns.Add(1)
	return nil
}

// subprotocolV2 is the WebSocket subprotocol whose frames carry message
// ids (SPEC §8); without it, frames are the seed's two keys.
const subprotocolV2 = "gochat.v2"

// maxHistoryParam bounds ?history=N; larger is a bad request, and N is cut
// to what rooms keep (-history).
const maxHistoryParam = 100_000

// parseQuery reads room, history and since from the request target; other
// parameters are ignored. Values are taken as they are, never unescaped.
func (up *upgrader) parseQuery(uri []byte) error {
	_, query, _ := bytes.Cut(uri, []byte("?"))
	for len(query) > 0 {
		var kv []byte
		kv, query, _ = bytes.Cut(query, []byte("&"))
		key, value, _ := bytes.Cut(kv, []byte("="))
		switch string(key) {
		case "room":
			if !chatmsg.ValidRoom(value) {
				return rejectRoomName
			}
			up.room = append(up.room[:0], value...)
		case "history":
			n, ok := parseDecimal(value)
			if !ok || n > maxHistoryParam {
				return rejectHistory
			}
			up.opts.HistoryN = min(int(n), max(up.s.cfg.History, 0))
		case "since":
			id, ok := parseDecimal(value)
			if !ok || !up.s.hub.Issued(id) {
				return rejectSince
			}
			up.opts.Resume, up.opts.Since = true, id
		}
	}
	return nil
}

// parseDecimal parses 1-19 ASCII digits.
func parseDecimal(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// originAllowed: same-origin (Origin's host equals Host) or on the allow-list.
// "null" and look-alike hosts match neither.
func (s *Server) originAllowed(origin, host []byte) bool {
	o := string(origin)
	for _, a := range s.cfg.Origins {
		if strings.EqualFold(o, a) {
			return true
		}
	}
	for _, scheme := range []string{"http://", "https://"} {
		if rest, ok := strings.CutPrefix(strings.ToLower(o), scheme); ok {
			return len(host) > 0 && rest == strings.ToLower(string(host))
		}
	}
	return false
}

// handoff gives a non-WebSocket request to net/http. The fd leaves the
// reactor (unregistered, then duplicated into a net.Conn and closed here),
// and the bytes already read are replayed to net/http first.
func (s *Server) handoff(c *Conn, head, rest []byte) {
	buffered := make([]byte, 0, len(head)+len(rest))
	buffered = append(append(buffered, head...), rest...)
	c.dropPartial() // head and rest may live there: copied above
	_ = s.ep.Del(int(c.fd))
	c.torn = true
	c.wmu.Lock()
	c.fdClosed = true // the reactor no longer owns the fd
	c.wmu.Unlock()
	s.conns.remove(c)
	s.nconns.Add(-1)
	s.drainedCheck()

	f := os.NewFile(uintptr(c.fd), "http")
	nc, err := net.FileConn(f) // dups the fd; f's close releases the original
	f.Close()
	if err != nil {
		s.log.Warn("http handoff failed", "err", err)
		return
	}
	if !s.httpLn.push(&replayConn{Conn: nc, buf: buffered}) {
		nc.Close()
	}
}

// replayConn is a net.Conn whose first reads return bytes the reactor read.
type replayConn struct {
	net.Conn
	buf []byte
}

func (rc *replayConn) Read(p []byte) (int, error) {
	if len(rc.buf) > 0 {
		n := copy(p, rc.buf)
		rc.buf = rc.buf[n:]
		return n, nil
	}
	return rc.Conn.Read(p)
}

// chanListener feeds handed-off connections to http.Server.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn, 256), done: make(chan struct{})}
}

// push queues a connection without blocking; false if full or closed.
func (l *chanListener) push(c net.Conn) bool {
	select {
	case <-l.done:
		return false
	default:
	}
	select {
	case l.ch <- c:
		return true
	default:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
