package server

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailru/easygo/netpoll"

	"gochat/server/internal/chat"
	"gochat/server/internal/wsframe"
)

// phase is where a connection is in its life. Written by the owner task,
// read by anyone (keeper, Shutdown) through Conn.phase.
type phase uint32

const (
	phaseHandshake phase = iota // reading the HTTP upgrade request
	phaseJoining                // upgraded, waiting for the session to join
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

// Conn is one client connection: one socket fd, no goroutine, and no buffers
// while idle. It is the transport under one chat.Session: it turns bytes
// into complete messages for the session (read.go) and writes what the hub
// and the session hand it (write.go); close.go ends it.
//
// Ownership. The connection's task (Run) is its owner: it alone reads the
// socket, parses, calls the session, changes phase and tears the connection
// down, and the sched state guarantees it runs on one worker at a time.
// Other goroutines (hub fan-out, keeper, Shutdown) only write through wmu,
// or ask the owner to close via requestClose.
type Conn struct {
	srv  *Server
	sess chat.Session // the chat layer's state for this client; owner only

	closeReq atomic.Pointer[wsframe.CloseCause] // close asked for by another goroutine
	lastRead atomic.Int64                       // unix nanos of the last read, or of input found by the poller; keepalive
	deadline atomic.Int64                       // unix nanos: handshake, join or close-linger deadline
	stuckAt  atomic.Int64                       // unix nanos since pending output last moved; 0 when none is pending

	part *partial // incomplete input (read.go); nil when none. Owned by the task.

	wmu sync.Mutex // Protects out, closeSent, fdClosed, and every write(2) on fd.
	out []byte     // bytes the kernel did not take yet; nil when none

	// The small fields last, together: the struct fits the allocator's
	// 208-byte class (232 bytes in declaration order took 240).
	fd    int32
	sched atomic.Uint32 // schedIdle / schedRunning / schedAgain
	phase atomic.Uint32 // a phase
	flags atomic.Uint32 // flagPinged | flagParked

	// Read state. Owned by the task.
	upgraded bool // counted in Server.wsConns
	overflow bool // accepted past the fd limit: answered 503 (or /healthz 200), never upgraded
	gotClose bool // peer's close frame received
	torn     bool // teardown done

	// Write state, under wmu.
	closeSent bool // close frame queued: nothing more is written
	fdClosed  bool // fd is closed: no syscall may use it
}

// Conn.flags: one word for two booleans other goroutines read.
const (
	flagPinged uint32 = 1 << iota // a keepalive ping is out since the last read
	flagParked                    // not read until a timer: inbound memory is over its bound (read.go); armLocked reads it
)

func (c *Conn) flag(f uint32) bool { return c.flags.Load()&f != 0 }

func (c *Conn) setFlag(f uint32, on bool) {
	if on {
		c.flags.Or(f)
	} else {
		c.flags.And(^f)
	}
}

func newConn(s *Server, fd int, now int64) *Conn {
	c := &Conn{srv: s, fd: int32(fd)}
	c.sess.Init(c, c.fd)
	c.lastRead.Store(now)
	c.deadline.Store(now + int64(s.cfg.HandshakeTimeout))
	return c
}

func (c *Conn) getPhase() phase { return phase(c.phase.Load()) }

// onEvent runs on the poller goroutine: it only notes the time and
// schedules the task.
func (c *Conn) onEvent(ev netpoll.EpollEvent) {
	if ev&0x20 != 0 { // easygo's _EPOLLCLOSED: the poller is gone
		return
	}
	if c.sched.Load() == schedIdle {
		c.lastRead.Store(time.Now().UnixNano()) // input arrived: see readInput
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
	defer c.putPartial()
	defer func() {
		if v := recover(); v != nil {
			c.srv.metrics.panics.Inc()
			c.srv.log.Error("panic in connection handler; closing with 1011", "fd", int(c.fd), "panic", v)
			c.startClose(causeInternal)
			c.finishStep()
		}
	}()
	if cause := c.closeReq.Swap(nil); cause != nil {
		if cause.Force {
			c.teardown()
			return
		}
		c.startClose(cause)
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
	if c.flag(flagParked) {
		ev = netpoll.EPOLLONESHOT // the park timer reschedules the task
	}
	if len(c.out) > 0 {
		ev |= netpoll.EPOLLOUT
	}
	_ = c.srv.ep.Mod(int(c.fd), ev)
}

// Joined is the session's word that it joined: the join deadline ends.
// Part of chat.Transport; owner only.
func (c *Conn) Joined() { c.phase.Store(uint32(phaseJoined)) }
