package server

import (
	"syscall"
	"time"

	"github.com/gobwas/ws"

	"gochat/server/internal/wsframe"
)

// The write direction: broadcast batches from the hub, replies from the
// session, control frames and HTTP responses from the transport, all
// through one pending buffer (out) flushed with non-blocking write(2).
// Every path goes through wmu, and every path that queues bytes for later
// respects the send queue: a client's pending output never exceeds
// Config.SendQueue (a canned close frame or HTTP response aside).

// Deliver hands one broadcast batch to the connection: written at once when
// nothing is pending (the batch is shared by every recipient, so this path
// copies nothing), else appended to the pending output. It never waits on
// the peer. Part of chat.Transport; called by hub fan-out tasks. Reports
// whether the batch was accepted, and the bytes written now (the caller
// sums them into the metrics once per shard).
func (c *Conn) Deliver(batch []byte) (ok bool, written int) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.sendLocked(batch, true)
}

// Send queues one frame for this client only (the session's replies).
// Part of chat.Transport; owner only.
func (c *Conn) Send(frame []byte) {
	c.wmu.Lock()
	_, n := c.sendLocked(frame, true)
	c.wmu.Unlock()
	c.srv.metrics.bytesOut.Add(float64(n))
}

// sendLocked writes b (whole frames, or an HTTP response) at once when
// nothing is pending, and queues what the kernel did not take: an idle
// connection's output needs no buffer of its own. With limited, what is
// queued must fit the send queue, or the client is a slow consumer: then a
// frame the kernel took part of is still finished, or the close frame after
// it would land inside its payload. Reports whether b was taken and how
// much of it was written now. Caller holds wmu.
func (c *Conn) sendLocked(b []byte, limited bool) (ok bool, written int) {
	if c.closeSent || c.fdClosed {
		return false, 0
	}
	rest := b
	idle := len(c.out) == 0
	if idle {
		for {
			n, err := syscall.Write(int(c.fd), rest)
			if n == len(rest) {
				return true, n
			}
			if n > 0 || err == syscall.EAGAIN {
				written = max(n, 0)
				rest = rest[written:]
				break
			}
			if err != syscall.EINTR {
				c.requestClose(causeDrop) // the peer is gone; the read side sees it too
				return false, 0
			}
		}
	}
	ok = true
	switch {
	case !limited || len(c.out)+len(rest) <= c.srv.cfg.SendQueue:
		c.appendOutLocked(rest)
	case written > 0:
		c.appendOutLocked(b[written:wsframe.FrameEnd(b, written)])
		fallthrough
	default:
		c.slowLocked()
		ok = false
	}
	if idle {
		c.armLocked() // output is pending now: wake the owner when writable
	}
	return ok, written
}

// writeControl sends a control frame (pong, ping) with a small payload.
func (c *Conn) writeControl(op ws.OpCode, payload []byte) {
	var b [wsframe.MaxHeaderSize + wsframe.MaxControlPayload]byte
	c.Send(wsframe.AppendFrame(b[:0], op, payload))
}

// sendPing queues a keepalive ping. Called by the keeper.
func (c *Conn) sendPing() {
	c.setFlag(flagPinged, true)
	c.writeControl(ws.OpPing, nil)
}

// writeFixedLocked sends bytes the server itself chose and bounded (an HTTP
// response, a close frame): they go after what is pending whatever the
// send queue holds, since they are small and nothing may displace them.
// Caller holds wmu.
func (c *Conn) writeFixedLocked(b []byte) {
	_, n := c.sendLocked(b, false)
	c.srv.metrics.bytesOut.Add(float64(n))
}

// appendOutLocked adds b to the pending output, counted in Server.outbound
// (the global bound the hub's rounds wait on). Caller holds wmu.
func (c *Conn) appendOutLocked(b []byte) {
	if len(c.out) == 0 && len(b) > 0 {
		c.stuckAt.Store(time.Now().UnixNano())
	}
	c.out = append(c.out, b...)
	c.srv.outbound.Add(int64(len(b)))
}

// dropOutLocked forgets the first n pending bytes (written, or never to be).
// Caller holds wmu.
func (c *Conn) dropOutLocked(n int) {
	c.srv.outbound.Add(-int64(n))
	if n == len(c.out) {
		c.out = nil
		c.stuckAt.Store(0)
		return
	}
	c.out = c.out[:copy(c.out, c.out[n:])]
	c.stuckAt.Store(time.Now().UnixNano()) // the peer is reading: it moved
}

// flushLocked writes pending output until the kernel stops taking it.
// Caller holds wmu.
func (c *Conn) flushLocked() {
	for len(c.out) > 0 && !c.fdClosed {
		n, err := syscall.Write(int(c.fd), c.out)
		if n > 0 {
			c.srv.metrics.bytesOut.Add(float64(n))
			c.dropOutLocked(n)
			continue
		}
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			c.armLocked() // wake the owner when writable
		default:
			c.dropOutLocked(len(c.out)) // the peer is gone; the read side sees it too
			c.requestClose(causeDrop)
		}
		return
	}
}

// slowLocked evicts a slow consumer: the close frame goes after what is
// already pending, and the close linger bounds how long the peer has to
// read it. Caller holds wmu.
func (c *Conn) slowLocked() {
	if c.closeReq.Load() != nil {
		return
	}
	c.srv.metrics.slowConsumers.Inc()
	c.requestClose(causeSlowConsumer)
}
