package server

import (
	"bytes"
	"sync"
	"syscall"
	"time"

	"github.com/gobwas/ws"

	"gochat/server/internal/wsframe"
)

// The read direction: socket bytes → HTTP upgrade → frames → complete text
// messages for the session. Everything here runs in the connection's task.

// maxFragments caps the frames one message may be split into, so endless
// empty continuations cannot keep a connection busy.
const maxFragments = 1024

// readBufs are the workers' read buffers: connections own none while idle.
var readBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// Inbound memory. A connection holds buffers only while a frame or a
// fragmented message is incomplete (in, msg); their sum over all
// connections is Server.inbound, bounded by Config.MaxInbound. Past the
// bound, a connection that holds partial input is not read (parked, and
// TCP pushes back on its sender) until memory frees up, and the others are
// read a little at a time, so that no client can make the server buffer
// more than the bound plus a small read per connection. One connection at a
// time (Server.grower) may grow past the bound until its partial input
// completes, within a handshake timeout (the keeper closes a grower that
// dawdles, so that a client cannot take the slot and go silent);
// completes, so that the parked ones cannot hold the memory for ever.

// parkFor is how long a parked connection waits before it is read again.
const parkFor = 20 * time.Millisecond

// smallRead is what a connection is read at a time while inbound memory
// is over its bound: enough for an ordinary chat message.
const smallRead = 512

// readInput reads what the socket has, up to a budget, and consumes it.
func (c *Conn) readInput() {
	c.setFlag(flagParked, false)
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	c.takePartial() // given back at the end of the step (Conn.step)
	buf := *bp
	for range 8 { // budget: then re-arm, so one client cannot hog a worker
		var data []byte
		var n, asked int
		var err error
		limit := len(buf)
		if c.srv.inboundOver() && c.srv.grower.Load() != c {
			if c.part.held == 0 {
				limit = smallRead
			} else if c.srv.grower.CompareAndSwap(nil, c) {
				c.srv.growerSince.Store(time.Now().UnixNano())
			} else {
				c.park()
				return
			}
			// Else this connection is the one that may grow past the
			// bound until its partial input completes: memory frees up
			// only when someone finishes a message, and if every holder
			// of partial input were parked, none ever would.
		}
		if len(c.part.in) > 0 {
			if want := max(c.part.need, len(c.part.in)+512); cap(c.part.in) < want {
				grown := make([]byte, len(c.part.in), want)
				copy(grown, c.part.in)
				c.part.in = grown
			}
			asked = cap(c.part.in) - len(c.part.in)
			n, err = syscall.Read(int(c.fd), c.part.in[len(c.part.in):cap(c.part.in)])
			if n > 0 {
				data = c.part.in[:len(c.part.in)+n]
			}
		} else {
			asked = limit
			n, err = syscall.Read(int(c.fd), buf[:limit])
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
		// The bytes arrived after the previous read, or when the poller
		// found the socket readable, whichever is later: that is lastRead
		// until now (see Session.OnMessage).
		arrived := c.lastRead.Swap(time.Now().UnixNano())
		if c.flag(flagPinged) {
			c.setFlag(flagPinged, false)
		}
		used := c.consume(data, arrived)
		if c.torn {
			return
		}
		rest := data[used:]
		switch {
		case len(rest) == 0:
			c.part.in, c.part.need = nil, 0
		case len(c.part.in) > 0: // data is c.part.in: shift the incomplete part down
			// Copy into the whole capacity: rest may be longer than the old
			// len(c.part.in) (this read added to an incomplete frame that is still
			// incomplete), and copy(c.part.in, rest) would silently drop its tail.
			c.part.in = c.part.in[:copy(c.part.in[:cap(c.part.in)], rest)]
		default: // data is the worker's buffer: keep the incomplete part
			reserve := max(c.part.need, len(rest)+512)
			if limit == smallRead {
				reserve = len(rest) // over the bound: keep what arrived, reserve nothing more
			}
			c.part.in = append(make([]byte, 0, reserve), rest...)
		}
		c.accountInbound()
		if n < asked {
			return // short read: the socket is drained
		}
	}
}

// partial is a connection's incomplete input: the bytes of a frame or
// request head that a read cut off, and a fragmented message being
// reassembled. A connection holds one only while it has such input (most
// have none between reads), taken from a pool for each step. Owner only.
type partial struct {
	in    []byte              // bytes of an incomplete frame or request; nil when none
	need  int                 // bytes the incomplete frame needs in total
	msg   []byte              // fragments of a message in progress; nil when none
	msgOp ws.OpCode           // opcode of the message in progress, 0 when none
	frags int                 // fragments in msg
	utf8  wsframe.UTF8Checker // how much of msg is known valid
	held  int                 // cap(in)+cap(msg) as counted in Server.inbound
}

var partials = sync.Pool{New: func() any { return new(partial) }}

// takePartial makes sure c.part is there for this step.
func (c *Conn) takePartial() {
	if c.part == nil {
		c.part = partials.Get().(*partial)
	}
}

// putPartial accounts the step's buffers and gives c.part back unless it
// holds incomplete input. Called once at the end of every step.
func (c *Conn) putPartial() {
	p := c.part
	if p == nil {
		return
	}
	c.accountInbound()
	if p.in == nil && p.msg == nil && p.msgOp == 0 {
		*p = partial{}
		partials.Put(p)
		c.part = nil
	}
}

// dropPartial forgets any incomplete input (the connection is closing).
// c.part itself stays until the step ends: the code that called may still
// be reading it.
func (c *Conn) dropPartial() {
	if p := c.part; p != nil {
		p.in, p.msg, p.msgOp, p.frags, p.need = nil, nil, 0, 0, 0
	}
}

// accountInbound brings Server.inbound up to date with this connection's
// buffers.
func (c *Conn) accountInbound() {
	p := c.part
	if held := cap(p.in) + cap(p.msg); held != p.held {
		c.srv.inbound.Add(int64(held - p.held))
		p.held = held
		if held == 0 {
			c.srv.grower.CompareAndSwap(c, nil)
		}
	}
}

// park stops reading the connection for parkFor.
func (c *Conn) park() {
	c.setFlag(flagParked, true)
	c.srv.metrics.inboundParks.Inc()
	time.AfterFunc(parkFor, c.schedule)
}

// consume processes complete requests and frames at the start of data and
// returns how many bytes it used.
func (c *Conn) consume(data []byte, arrived int64) int {
	off := 0
	if c.getPhase() == phaseHandshake {
		end := bytes.Index(data, []byte("\r\n\r\n"))
		if end < 0 {
			if len(data) > maxHandshake {
				c.refuse(response431)
				return len(data)
			}
			// Grow with what arrives rather than reserving the 8 KiB cap:
			// 5,000 slowloris sockets must not pin 40 MB.
			c.part.need = min(2*len(data)+256, maxHandshake+1)
			return 0
		}
		end += 4
		if end > maxHandshake {
			c.refuse(response431)
			return len(data)
		}
		if c.overflow {
			if path, _ := requestTarget(data[:end]); string(path) == "/healthz" {
				c.refuse(responseHealthy)
			} else {
				c.refuse(response503)
			}
			return len(data)
		}
		if !c.srv.handshake(c, data[:end], data[end:]) {
			return len(data) // handed to net/http, or rejected and torn down
		}
		off = end
	}
	for off < len(data) {
		limit := int64(c.srv.cfg.MaxMessage - len(c.part.msg))
		h, ok, violation := wsframe.ParseHeader(data[off:], limit)
		if violation != nil {
			c.startClose(violation)
			return len(data) // nothing after a broken frame can be trusted
		}
		if !ok {
			c.part.need = wsframe.MaxHeaderSize + 4
			break
		}
		total := h.Size + int(h.Length)
		if len(data)-off < total {
			// Reserve only what has a chance to arrive soon: a header that
			// declares a large frame gets its buffer as the bytes come.
			c.part.need = min(total, 2*(len(data)-off)+64<<10)
			break
		}
		payload := data[off+h.Size : off+total]
		ws.Cipher(payload, h.Mask, 0)
		off += total
		c.frame(h, payload, arrived)
		if c.torn {
			return len(data)
		}
	}
	return off
}

// frame handles one complete, unmasked frame.
func (c *Conn) frame(h wsframe.Header, p []byte, arrived int64) {
	if c.getPhase() == phaseClosing {
		if h.Op == ws.OpClose {
			c.gotClose = true
		}
		return // the close handshake is under way: data is discarded
	}
	switch h.Op {
	case ws.OpPing:
		c.writeControl(ws.OpPong, p)
		return
	case ws.OpPong:
		return
	case ws.OpClose:
		echo, ok := wsframe.CheckClosePayload(p)
		if !ok {
			c.startClose(wsframe.ErrBadClose)
			return
		}
		c.gotClose = true
		cause := wsframe.PeerClose(echo)
		c.startClose(&cause)
		return
	case ws.OpBinary:
		if c.part.msgOp != 0 {
			c.startClose(wsframe.ErrBadContinuation)
			return
		}
		c.startClose(wsframe.ErrBinary)
		return
	case ws.OpText:
		if c.part.msgOp != 0 {
			c.startClose(wsframe.ErrBadContinuation)
			return
		}
		if h.Fin {
			c.part.utf8.Reset()
			if !c.part.utf8.Check(p, true) {
				c.startClose(wsframe.ErrInvalidUTF8)
				return
			}
			c.message(p, arrived)
			return
		}
		c.part.msgOp, c.part.frags = ws.OpText, 1
		c.part.utf8.Reset()
		c.part.msg = append(c.part.msg[:0], p...)
	case ws.OpContinuation:
		if c.part.msgOp == 0 {
			c.startClose(wsframe.ErrBadContinuation)
			return
		}
		if c.part.frags++; c.part.frags > maxFragments {
			c.startClose(wsframe.ErrTooManyFrags)
			return
		}
		c.part.msg = append(c.part.msg, p...)
	}
	// A fragment of a text message was appended: fail fast on bad UTF-8,
	// checking only the bytes this fragment added.
	if !c.part.utf8.Check(c.part.msg, h.Fin) {
		c.startClose(wsframe.ErrInvalidUTF8)
		return
	}
	if h.Fin {
		msg := c.part.msg
		c.part.msg, c.part.msgOp, c.part.frags = nil, 0, 0
		c.message(msg, arrived)
	}
}

// message hands one complete text message to the session.
func (c *Conn) message(p []byte, arrived int64) {
	if hook := c.srv.testHookMessage; hook != nil {
		hook(p)
	}
	c.sess.OnMessage(p, arrived)
}
