package server

import (
	"context"
	"log/slog"
	"syscall"
	"time"

	"github.com/gobwas/ws"

	"gochat/server/internal/wsframe"
)

// How a connection ends. Protocol violations are named in wsframe and the
// chat layer's closes in chat; these are the transport's own. Every close
// is counted once, in gochat_disconnects_total{code=Label}.
var (
	causeShutdown     = &wsframe.CloseCause{Code: ws.StatusGoingAway, Reason: "server shutting down", Label: "1001"}
	causeSlowConsumer = &wsframe.CloseCause{Code: ws.StatusPolicyViolation, Reason: "slow consumer", Label: "1008"}
	causeJoinTimeout  = &wsframe.CloseCause{Code: ws.StatusPolicyViolation, Reason: "join timeout", Label: "1008"}
	causeInternal     = &wsframe.CloseCause{Code: ws.StatusInternalServerError, Reason: "internal error", Label: "1011"}
	causeTooSlow      = &wsframe.CloseCause{Code: ws.StatusPolicyViolation, Reason: "message too slow", Label: "1008"}
	// causeDrop closes the socket at once, without a close handshake: the
	// peer is gone, silent past its deadline, or the drain ran out of time.
	causeDrop = &wsframe.CloseCause{Code: 1006, Label: "1006", Force: true}
)

// requestClose asks the owner to close the connection with cause. The
// first request wins, except that a forced one always takes over. Safe for
// concurrent use, also with wmu held: scheduling never takes wmu.
func (c *Conn) requestClose(cause *wsframe.CloseCause) {
	if c.closeReq.CompareAndSwap(nil, cause) || cause.Force {
		if cause.Force {
			c.closeReq.Store(cause)
		}
		c.schedule()
	}
}

// Close starts closing with cause. Part of chat.Transport; owner only.
func (c *Conn) Close(cause *wsframe.CloseCause) { c.startClose(cause) }

// startClose leaves the chat, queues a close frame and enters the closing
// phase: the socket is closed once the peer's close frame or EOF arrives,
// or at the close-linger deadline (keeper). Owner only.
func (c *Conn) startClose(cause *wsframe.CloseCause) {
	if c.getPhase() == phaseClosing {
		return
	}
	if cause.Force {
		c.teardown()
		return
	}
	c.srv.metrics.closed(cause)
	c.srv.log.LogAttrs(context.Background(), slog.LevelDebug, "close", slog.Int("fd", int(c.fd)), slog.Int("code", int(cause.Code)))
	c.sess.Leave()
	c.dropPartial()
	c.deadline.Store(time.Now().Add(c.srv.cfg.CloseLinger).UnixNano())
	c.phase.Store(uint32(phaseClosing))
	var b [wsframe.MaxHeaderSize + wsframe.MaxControlPayload]byte
	c.wmu.Lock()
	c.writeFixedLocked(wsframe.AppendClose(b[:0], cause))
	c.closeSent = true
	if len(c.out) == 0 && !c.fdClosed {
		// Everything is out: half-close so a client waiting for the server
		// to end the TCP connection (RFC 6455 7.1.1) sees it.
		_ = syscall.Shutdown(int(c.fd), syscall.SHUT_WR)
	}
	c.wmu.Unlock()
}

// refuse answers a request the reactor will not serve with a canned HTTP
// response (httpresp.go), counts it, and tears the connection down.
// Owner only.
func (c *Conn) refuse(r *cannedResponse) {
	r.count(c.srv.metrics)
	c.wmu.Lock()
	c.writeFixedLocked(r.bytes)
	c.wmu.Unlock()
	c.teardown()
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
		s.metrics.closed(causeDrop) // dropped without a close frame
		s.log.LogAttrs(context.Background(), slog.LevelDebug, "dropped", slog.Int("fd", int(c.fd)))
	}
	c.sess.Leave()
	_ = s.ep.Del(int(c.fd))
	c.wmu.Lock()
	if !c.fdClosed {
		c.fdClosed = true
		_ = syscall.Close(int(c.fd))
	}
	c.dropOutLocked(len(c.out))
	c.wmu.Unlock()
	c.dropPartial()
	s.conns.remove(c)
	s.connClosed(c)
	if c.overflow {
		s.accept.openSpare() // this connection held the reserve fd
	}
}
