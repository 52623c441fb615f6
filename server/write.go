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
	if c.closeSent || c.fdClosed {
		return false, 0
	}
	if len(c.out) > 0 {
		return c.queueLocked(batch), 0
	}
	for {
		n, err := syscall.Write(c.fd, batch)
		switch {
		case n == len(batch):
			return true, n
		case n > 0 || err == syscall.EAGAIN:
			n = max(n, 0)
			ok := c.queueLocked(batch[n:])
			if !ok && n > 0 {
				// The kernel took part of a frame: finish that frame, or
				// the close frame after it would land inside its payload.
				c.appendOutLocked(batch[n:wsframe.FrameEnd(batch, n)])
			}
			c.armLocked()
			return ok, n
		case err == syscall.EINTR:
			continue
		default:
			c.requestClose(causeDrop)
			return false, 0
		}
	}
}

// Send queues one frame for this client only (the session's replies).
// Part of chat.Transport; owner only.
func (c *Conn) Send(frame []byte) {
	c.wmu.Lock()
	if c.queueLocked(frame) {
		c.flushLocked()
	}
	c.wmu.Unlock()
}

// writeControl sends a control frame (pong, ping) with a small payload.
func (c *Conn) writeControl(op ws.OpCode, payload []byte) {
	var b [wsframe.MaxHeaderSize + wsframe.MaxControlPayload]byte
	c.Send(wsframe.AppendFrame(b[:0], op, payload))
}

// sendPing queues a keepalive ping. Called by the keeper.
func (c *Conn) sendPing() {
	c.pinged.Store(true)
	c.writeControl(ws.OpPing, nil)
}

// writeFixedLocked sends bytes the server itself chose and bounded (an HTTP
// response, a close frame): they go after what is pending whatever the
// send queue holds, since they are small and nothing may displace them.
// Caller holds wmu.
func (c *Conn) writeFixedLocked(b []byte) {
	if c.closeSent || c.fdClosed {
		return
	}
	c.appendOutLocked(b)
	c.flushLocked()
}

// queueLocked appends b to the pending output if that keeps it within the
// send queue; otherwise the client is a slow consumer and is evicted. It
// reports whether b was queued. Caller holds wmu.
func (c *Conn) queueLocked(b []byte) bool {
	if c.closeSent || c.fdClosed {
		return false
	}
	if len(c.out)+len(b) > c.srv.cfg.SendQueue {
		c.slowLocked()
		return false
	}
	c.appendOutLocked(b)
	return true
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
		n, err := syscall.Write(c.fd, c.out)
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
