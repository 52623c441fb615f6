package server

import (
	"bytes"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/mailru/easygo/netpoll"
)

// phase is where a connection is in its life. Written by the owner task,
// read by anyone (keeper, fan-out) through Conn.phase.
type phase uint32

const (
	phaseHandshake phase = iota // reading the HTTP upgrade request
	phaseJoining                // upgraded, waiting for a valid join message
	phaseJoined                 // in the chat
	phaseClosing                // close frame queued; waiting for the peer's close or EOF
)

// Scheduling states of Conn.sched. A connection's task runs on at most one
// worker at a time; events that arrive while it runs set schedAgain so the
// running task loops instead of a second worker starting.
const (
	schedIdle uint32 = iota
	schedRunning
	schedAgain
)

// closeReq packs a close requested by a goroutine that does not own the
// connection: the status code, plus forceClose to skip the close handshake.
const forceClose = 1 << 16

// maxFragments caps the frames one message may be split into, so endless
// empty continuations cannot keep a connection busy.
const maxFragments = 1024

// Conn is one client connection: one socket fd, no goroutine, and no buffers
// while idle.
//
// Ownership. The connection's task (Run) is its owner: it alone reads the
// socket, parses, changes phase and tears the connection down, and the
// sched state guarantees it runs on one worker at a time. Other goroutines
// (hub fan-out, keeper) only write through wmu, or ask the owner to close via
// requestClose.
type Conn struct {
	srv *Server
	fd  int

	sched    atomic.Uint32 // schedIdle / schedRunning / schedAgain
	phase    atomic.Uint32 // a phase
	closeReq atomic.Uint32 // pending close request: code | forceClose
	lastRead atomic.Int64  // unix nanos of the last byte read; keepalive
	lastPing atomic.Int64  // unix nanos of the last ping sent
	deadline atomic.Int64  // unix nanos: handshake, join or close-linger deadline

	// Read state. Owned by the task.
	in       []byte    // bytes of an incomplete frame or request; nil when none
	need     int       // bytes the incomplete frame needs in total
	msg      []byte    // fragments of a message in progress; nil when none
	msgOp    ws.OpCode // opcode of the message in progress, 0 when none
	frags    int       // fragments in msg
	tokens   float64   // rate limiter bucket
	tokensAt int64     // unix nanos of the last refill
	errs     int       // errors in the current error window
	errsAt   int64     // unix nanos when the error window started
	name     string    // display name once joined
	key      string    // normalized name (uniqueness key) once joined
	member   int       // index in the hub shard, -1 when not a member
	joined   bool      // registered in the hub
	upgraded bool      // counted in Server.wsConns
	gotClose bool      // peer's close frame received
	torn     bool      // teardown done

	// Write state.
	wmu       sync.Mutex // Protects following and every write(2) on fd.
	out       []byte     // bytes the kernel did not take yet; nil when none
	closeSent bool       // close frame queued: nothing more is written
	fdClosed  bool       // fd is closed: no syscall may use it
}

func newConn(s *Server, fd int, now int64) *Conn {
	c := &Conn{srv: s, fd: fd, member: -1}
	c.lastRead.Store(now)
	c.lastPing.Store(now)
	c.deadline.Store(now + int64(s.cfg.HandshakeTimeout))
	return c
}

func (c *Conn) getPhase() phase { return phase(c.phase.Load()) }

// onEvent runs on the poller goroutine: it only schedules the task.
func (c *Conn) onEvent(ev netpoll.EpollEvent) {
	if ev&0x20 != 0 { // easygo's _EPOLLCLOSED: the poller is gone
		return
	}
	c.schedule()
}

// schedule makes sure the task runs (again) soon. Safe for concurrent use;
// never blocks.
func (c *Conn) schedule() {
	for {
		switch c.sched.Load() {
		case schedIdle:
			if c.sched.CompareAndSwap(schedIdle, schedRunning) {
				if c.srv.pool.Schedule(c) != nil {
					c.sched.Store(schedIdle) // pool closed: shutdown owns cleanup
				}
				return
			}
		case schedRunning:
			if c.sched.CompareAndSwap(schedRunning, schedAgain) {
				return
			}
		default:
			return
		}
	}
}

// requestClose asks the owner to close the connection with code (plus
// forceClose to drop it without a handshake). The first request wins. Safe
// for concurrent use, also with wmu held: scheduling never takes wmu.
func (c *Conn) requestClose(req uint32) {
	if c.closeReq.CompareAndSwap(0, req) || req&forceClose != 0 {
		if req&forceClose != 0 {
			c.closeReq.Store(req)
		}
		c.schedule()
	}
}

// Run is the connection's task. It is called by the pool only.
func (c *Conn) Run() {
	for {
		c.step()
		if c.sched.CompareAndSwap(schedRunning, schedIdle) {
			return
		}
		c.sched.Store(schedRunning)
	}
}

func (c *Conn) step() {
	if c.torn {
		return
	}
	defer func() {
		if v := recover(); v != nil {
			c.srv.metrics.panics.Inc()
			c.srv.log.Error("panic in connection handler; closing with 1011", "fd", c.fd, "panic", v)
			c.fail(ws.StatusInternalServerError, "internal error")
			c.finishStep()
		}
	}()
	if req := c.closeReq.Swap(0); req != 0 {
		if req&forceClose != 0 {
			c.teardown()
			return
		}
		c.startClose(ws.StatusCode(req), closeReason(ws.StatusCode(req)))
	}
	c.readInput()
	c.finishStep()
}

// finishStep flushes, tears down a finished close, or re-arms the fd.
func (c *Conn) finishStep() {
	if c.torn {
		return
	}
	c.wmu.Lock()
	c.flushLocked()
	drained := len(c.out) == 0
	if c.getPhase() == phaseClosing && drained && c.gotClose {
		c.wmu.Unlock()
		c.teardown()
		return
	}
	c.armLocked()
	c.wmu.Unlock()
}

// armLocked re-arms the one-shot registration: readable always, writable
// while output is pending. Caller holds wmu.
func (c *Conn) armLocked() {
	if c.fdClosed {
		return
	}
	var ev netpoll.EpollEvent = netpoll.EPOLLIN | netpoll.EPOLLRDHUP | netpoll.EPOLLONESHOT
	if len(c.out) > 0 {
		ev |= netpoll.EPOLLOUT
	}
	_ = c.srv.ep.Mod(c.fd, ev)
}

// readInput reads what the socket has, up to a budget, and consumes it.
func (c *Conn) readInput() {
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	buf := *bp
	for range 8 { // budget: then re-arm, so one client cannot hog a worker
		var data []byte
		var n int
		var err error
		if len(c.in) > 0 {
			if want := max(c.need, len(c.in)+512); cap(c.in) < want {
				grown := make([]byte, len(c.in), want)
				copy(grown, c.in)
				c.in = grown
			}
			n, err = syscall.Read(c.fd, c.in[len(c.in):cap(c.in)])
			if n > 0 {
				data = c.in[:len(c.in)+n]
			}
		} else {
			n, err = syscall.Read(c.fd, buf)
			if n > 0 {
				data = buf[:n]
			}
		}
		switch {
		case err == syscall.EAGAIN:
			return
		case err == syscall.EINTR:
			continue
		case err != nil || n == 0: // reset, or EOF: the peer is gone
			c.teardown()
			return
		}
		c.lastRead.Store(time.Now().UnixNano())
		used := c.consume(data)
		if c.torn {
			return
		}
		rest := data[used:]
		switch {
		case len(rest) == 0:
			c.in, c.need = nil, 0
		case len(c.in) > 0: // data is c.in: shift the incomplete part down
			// Copy into the whole capacity: rest may be longer than the old
			// len(c.in) (this read added to an incomplete frame that is still
			// incomplete), and copy(c.in, rest) would silently drop its tail.
			c.in = c.in[:copy(c.in[:cap(c.in)], rest)]
		default: // data is the worker's buffer: keep the incomplete part
			c.in = append(make([]byte, 0, max(c.need, len(rest)+512)), rest...)
		}
		if len(c.in) == 0 && n < len(buf) {
			return // short read: the socket is drained
		}
	}
}

// readBufs are the workers' read buffers: connections own none while idle.
var readBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// consume processes complete requests and frames at the start of data and
// returns how many bytes it used.
func (c *Conn) consume(data []byte) int {
	off := 0
	if c.getPhase() == phaseHandshake {
		end := bytes.Index(data, []byte("\r\n\r\n"))
		if end < 0 {
			if len(data) > maxHandshake {
				c.srv.metrics.handshakeRejects.Inc()
				c.writeRaw([]byte("HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"))
				c.teardown()
				return len(data)
			}
			// Grow with what arrives rather than reserving the 8 KiB cap:
			// 5,000 slowloris sockets must not pin 40 MB.
			c.need = min(2*len(data)+256, maxHandshake+1)
			return 0
		}
		end += 4
		if end > maxHandshake {
			c.writeRaw([]byte("HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"))
			c.teardown()
			return len(data)
		}
		if !c.srv.handshake(c, data[:end], data[end:]) {
			return len(data) // handed to net/http, or rejected and torn down
		}
		off = end
	}
	for off < len(data) {
		limit := int64(c.srv.cfg.MaxMessage - len(c.msg))
		h, ok, code := parseHeader(data[off:], limit)
		if code != 0 {
			if c.getPhase() != phaseClosing {
				c.fail(code, closeReason(code))
			}
			return len(data) // nothing after a broken frame can be trusted
		}
		if !ok {
			c.need = maxHeaderSize + 4
			break
		}
		total := h.size + int(h.length)
		if len(data)-off < total {
			c.need = total
			break
		}
		payload := data[off+h.size : off+total]
		ws.Cipher(payload, h.mask, 0)
		off += total
		c.frame(h, payload)
		if c.torn {
			return len(data)
		}
	}
	return off
}

// frame handles one complete, unmasked frame.
func (c *Conn) frame(h frameHeader, p []byte) {
	if c.getPhase() == phaseClosing {
		if h.op == ws.OpClose {
			c.gotClose = true
		}
		return // the close handshake is under way: data is discarded
	}
	switch h.op {
	case ws.OpPing:
		c.writeFrame(ws.OpPong, p)
		return
	case ws.OpPong:
		return
	case ws.OpClose:
		echo, fail := checkClosePayload(p)
		if fail != 0 {
			c.fail(fail, closeReason(fail))
			return
		}
		c.gotClose = true
		c.startClose(echo, "")
		return
	case ws.OpBinary:
		if c.msgOp != 0 {
			c.fail(ws.StatusProtocolError, "protocol error")
			return
		}
		c.fail(ws.StatusUnsupportedData, "binary messages not supported")
		return
	case ws.OpText:
		if c.msgOp != 0 {
			c.fail(ws.StatusProtocolError, "protocol error")
			return
		}
		if h.fin {
			if !utf8.Valid(p) {
				c.fail(ws.StatusInvalidFramePayloadData, "invalid utf-8")
				return
			}
			c.message(p)
			return
		}
		c.msgOp, c.frags = ws.OpText, 1
		c.msg = append(c.msg[:0], p...)
	case ws.OpContinuation:
		if c.msgOp == 0 {
			c.fail(ws.StatusProtocolError, "protocol error")
			return
		}
		if c.frags++; c.frags > maxFragments {
			c.fail(ws.StatusMessageTooBig, "too many fragments")
			return
		}
		c.msg = append(c.msg, p...)
	}
	// A fragment of a text message was appended: fail fast on bad UTF-8.
	if !validUTF8Prefix(c.msg, h.fin) {
		c.fail(ws.StatusInvalidFramePayloadData, "invalid utf-8")
		return
	}
	if h.fin {
		msg := c.msg
		c.msg, c.msgOp, c.frags = nil, 0, 0
		c.message(msg)
	}
}

// validUTF8Prefix reports whether b is valid UTF-8, allowing an incomplete
// last character unless the message is complete.
func validUTF8Prefix(b []byte, complete bool) bool {
	if complete {
		return utf8.Valid(b)
	}
	// Leave out up to 3 trailing bytes that may start a character.
	cut := len(b)
	for i := len(b) - 1; i >= 0 && i >= len(b)-3; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				cut = i
			}
			break
		}
	}
	return utf8.Valid(b[:cut])
}

// fail closes the connection because of what the peer sent.
func (c *Conn) fail(code ws.StatusCode, reason string) {
	c.startClose(code, reason)
}

// startClose leaves the chat, queues a close frame and enters the closing
// phase: the socket is closed once the peer's close frame or EOF arrives,
// or at the close-linger deadline (keeper). Owner only.
func (c *Conn) startClose(code ws.StatusCode, reason string) {
	if c.getPhase() == phaseClosing {
		return
	}
	c.srv.metrics.closed(code)
	c.srv.log.Debug("close", "fd", c.fd, "code", int(code))
	c.srv.hub.leave(c)
	c.msg, c.msgOp = nil, 0
	c.deadline.Store(time.Now().Add(c.srv.cfg.CloseLinger).UnixNano())
	c.phase.Store(uint32(phaseClosing))
	var b [2 + 125 + maxHeaderSize]byte
	frame := appendClose(b[:0], code, reason)
	c.wmu.Lock()
	c.appendLocked(frame, false)
	c.closeSent = true
	c.flushLocked()
	if len(c.out) == 0 && !c.fdClosed {
		// Everything is out: half-close so a client waiting for the server
		// to end the TCP connection (RFC 6455 7.1.1) sees it.
		_ = syscall.Shutdown(c.fd, syscall.SHUT_WR)
	}
	c.wmu.Unlock()
}

// teardown releases the connection exactly once: leave the chat, unregister
// from epoll, then close the fd, so a later connection that reuses the fd
// number never sees this one's registration. Owner only.
func (c *Conn) teardown() {
	if c.torn {
		return
	}
	c.torn = true
	s := c.srv
	if c.upgraded && c.getPhase() != phaseClosing {
		s.metrics.closed(1006) // dropped without a close frame
		s.log.Debug("dropped", "fd", c.fd)
	}
	s.hub.leave(c)
	_ = s.ep.Del(c.fd)
	c.wmu.Lock()
	if !c.fdClosed {
		c.fdClosed = true
		_ = syscall.Close(c.fd)
	}
	c.out = nil
	c.wmu.Unlock()
	c.in, c.msg = nil, nil
	s.conns.remove(c)
	s.connClosed(c)
}

// writeFrame sends one frame with a small payload (control frames, replies).
func (c *Conn) writeFrame(op ws.OpCode, payload []byte) {
	var b [maxHeaderSize + 256]byte
	frame := appendFrame(b[:0], op, payload)
	c.wmu.Lock()
	if c.appendLocked(frame, true) {
		c.flushLocked()
	}
	c.wmu.Unlock()
}

// writeRaw sends bytes that are not a WebSocket frame (HTTP responses).
func (c *Conn) writeRaw(b []byte) {
	c.wmu.Lock()
	c.appendLocked(b, false)
	c.flushLocked()
	c.wmu.Unlock()
}

// appendLocked queues b after any pending output. With limit, exceeding the
// send queue marks the connection a slow consumer instead. Reports whether
// b was queued. Caller holds wmu.
func (c *Conn) appendLocked(b []byte, limit bool) bool {
	if c.closeSent || c.fdClosed {
		return false
	}
	if limit && len(c.out)+len(b) > c.srv.cfg.SendQueue {
		c.slowLocked()
		return false
	}
	c.out = append(c.out, b...)
	return true
}

// flushLocked writes pending output until the kernel stops taking it.
// Caller holds wmu.
func (c *Conn) flushLocked() {
	for len(c.out) > 0 && !c.fdClosed {
		n, err := syscall.Write(c.fd, c.out)
		if n > 0 {
			c.srv.metrics.bytesOut.Add(float64(n))
			if n == len(c.out) {
				c.out = nil
				return
			}
			c.out = c.out[:copy(c.out, c.out[n:])]
			continue
		}
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			c.armLocked() // wake the owner when writable
		default:
			c.out = nil // the peer is gone; the read side sees it too
			c.requestClose(forceClose)
		}
		return
	}
}

// deliver hands one broadcast batch to the connection: written at once when
// nothing is pending (the batch is shared by every recipient, so this path
// copies nothing), else appended to the pending output. It never waits on
// the peer. Called by hub fan-out tasks. Reports whether the batch was
// accepted, and the bytes written now (the caller sums them into the
// metrics once per shard, keeping a shared atomic off the per-write path).
func (c *Conn) deliver(batch []byte) (ok bool, written int) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closeSent || c.fdClosed {
		return false, 0
	}
	if len(c.out) > 0 {
		if len(c.out)+len(batch) > c.srv.cfg.SendQueue {
			c.slowLocked()
			return false, 0
		}
		c.out = append(c.out, batch...)
		return true, 0
	}
	for {
		n, err := syscall.Write(c.fd, batch)
		switch {
		case n == len(batch):
			return true, n
		case n > 0 || err == syscall.EAGAIN:
			c.out = append(c.out, batch[max(n, 0):]...)
			c.armLocked()
			return true, max(n, 0)
		case err == syscall.EINTR:
			continue
		default:
			c.requestClose(forceClose)
			return false, 0
		}
	}
}

// slowLocked evicts a slow consumer: the close frame goes after what is
// already pending (one frame over the limit), and the close linger bounds
// how long the peer has to read it. Caller holds wmu.
func (c *Conn) slowLocked() {
	if c.closeReq.Load() != 0 {
		return
	}
	c.srv.metrics.slowConsumers.Inc()
	c.requestClose(uint32(ws.StatusPolicyViolation))
}

// sendPing queues a keepalive ping. Called by the keeper.
func (c *Conn) sendPing(now int64) {
	c.lastPing.Store(now)
	c.writeFrame(ws.OpPing, nil)
}

// closeReason is the fixed close reason for a code; never user input.
func closeReason(code ws.StatusCode) string {
	switch code {
	case ws.StatusGoingAway:
		return "server shutting down"
	case ws.StatusProtocolError:
		return "protocol error"
	case ws.StatusUnsupportedData:
		return "binary messages not supported"
	case ws.StatusInvalidFramePayloadData:
		return "invalid utf-8"
	case ws.StatusPolicyViolation:
		return "policy violation"
	case ws.StatusMessageTooBig:
		return "message too big"
	case ws.StatusInternalServerError:
		return "internal error"
	}
	return ""
}
