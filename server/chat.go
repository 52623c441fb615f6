package server

import (
	"bytes"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// The chat protocol on top of frames (SPEC §2). Everything here runs in the
// connection's task.

// scratchBufs hold decoded message strings; a message needs one only while
// it is handled.
var scratchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// message handles one complete text message.
func (c *Conn) message(p []byte) {
	if hook := c.srv.testHookMessage; hook != nil {
		hook(p)
	}
	c.srv.metrics.messagesIn.Inc()
	sp := scratchBufs.Get().(*[]byte)
	m, scratch, err := parseClientMsg(p, *sp)
	switch c.getPhase() {
	case phaseJoining:
		c.join(m, err)
	case phaseJoined:
		c.chat(m, err)
	}
	*sp = scratch[:0]
	scratchBufs.Put(sp)
}

// join handles the first message. A bad join gets an Error message, then 1008.
func (c *Conn) join(m clientMsg, err error) {
	var name, key string
	if err == nil && !m.hasUsername {
		err = errUsernameRequired
	}
	if err == nil {
		name, key, err = checkUsername(m.username)
	}
	if err == nil {
		err = c.srv.hub.join(c, name, key)
	}
	if err != nil {
		c.srv.metrics.joinRejects.Inc()
		c.sendError(err)
		c.fail(ws.StatusPolicyViolation, "bad join")
		return
	}
	c.srv.metrics.joins.Inc()
	c.srv.log.Debug("join", "fd", c.fd)
	c.tokens, c.tokensAt = float64(c.srv.cfg.Burst), time.Now().UnixNano()
	if len(bytes.TrimSpace(m.content)) > 0 {
		if utf8.RuneCount(m.content) > c.srv.cfg.MaxContent {
			c.reject(errContentTooLong)
		} else {
			c.tokens--
			c.publish(m.content)
		}
	}
	if c.srv.cfg.presence() {
		c.srv.hub.notice(name, " joined the chat")
	}
}

// chat handles a message after the join. The username field is ignored: a
// client speaks only under the name it joined with.
func (c *Conn) chat(m clientMsg, err error) {
	switch {
	case err != nil:
		c.reject(err)
	case len(bytes.TrimSpace(m.content)) == 0:
		// Empty or whitespace-only content is ignored, as in the original.
	case utf8.RuneCount(m.content) > c.srv.cfg.MaxContent:
		c.reject(errContentTooLong)
	case !c.allow():
		c.srv.metrics.rateLimited.Inc()
		c.reject(errRateLimited)
	default:
		c.publish(m.content)
	}
}

func (c *Conn) publish(content []byte) {
	if err := c.srv.hub.publish(c.name, content); err != nil {
		c.sendError(err)
	}
}

// allow takes a token from the client's bucket (Rate per second, Burst deep).
func (c *Conn) allow() bool {
	now := time.Now().UnixNano()
	cfg := &c.srv.cfg
	c.tokens += float64(now-c.tokensAt) / 1e9 * cfg.Rate
	c.tokens = min(c.tokens, float64(cfg.Burst))
	c.tokensAt = now
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// reject answers a bad message with an Error and charges the error budget;
// a client over budget is closed with 1008.
func (c *Conn) reject(err error) {
	now := time.Now().UnixNano()
	if now-c.errsAt > int64(time.Minute) {
		c.errs, c.errsAt = 0, now
	}
	c.errs++
	c.sendError(err)
	if c.errs > c.srv.cfg.ErrorBudget {
		c.srv.metrics.policyCloses.Inc()
		c.sendError(errTooManyErrors)
		c.fail(ws.StatusPolicyViolation, "too many errors")
	}
}

// sendError sends a System "Error: ..." message to this client only.
func (c *Conn) sendError(err error) {
	frame := errorFrames[err]
	if frame == nil {
		frame = errorFrames[errBadJSON]
	}
	c.wmu.Lock()
	if c.appendLocked(frame, true) {
		c.flushLocked()
	}
	c.wmu.Unlock()
}

// errorFrames are the Error messages, framed once at start-up.
var errorFrames = func() map[error][]byte {
	m := map[error][]byte{}
	for _, err := range []error{
		errNotObject, errBadJSON, errWrongType, errUnknownField, errUsernameRequired,
		errUsernameLength, errUsernameChars, errUsernameReserved, errUsernameTaken,
		errContentTooLong, errRateLimited, errTooManyErrors, errServerBusy,
	} {
		m[err] = appendFrame(nil, ws.OpText, appendChat(nil, systemName, "Error: "+err.Error()))
	}
	return m
}()

// systemName is the sender of notices and errors.
const systemName = "System"
