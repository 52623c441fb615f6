package server

import (
	"errors"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mailru/easygo/netpoll"
)

// Admission: accept on the poller goroutine, shed under overload, refuse
// cleanly at the fd limit, register the rest with the reactor.

// overloaded reports sustained pool overload: the backlog has stayed past
// OverloadQueue for longer than overloadGrace, so admitting more clients
// would only slow everyone. A burst that the workers catch up with (a
// reconnect storm) sheds nobody. The keeper calls it every tick as well as
// admission, so a backlog seen deep twice, with shallow stretches between,
// never counts as one sustained overload.
func (s *Server) overloaded() bool {
	if s.pool.Stats().Waiting <= s.cfg.OverloadQueue {
		s.overloadSince.Store(0)
		return false
	}
	now := time.Now().UnixNano()
	since := s.overloadSince.Load()
	if since == 0 {
		s.overloadSince.CompareAndSwap(0, now)
		return false
	}
	return now-since > int64(overloadGrace)
}

// overloadGrace is how long the pool backlog must stay deep before new
// connections are shed.
const overloadGrace = time.Second

// acceptor accepts new connections on the poller goroutine. accept4 on a
// non-blocking listener never blocks, and accepting there keeps admission
// (and load shedding) working while every worker is busy.
type acceptor struct {
	srv     *Server
	backoff time.Duration // current EMFILE back-off; poller goroutine only
	spare   atomic.Int64  // reserve fd (/dev/null) given up to refuse a client at EMFILE; -1 if none
}

// openSpare reserves one fd for refusing clients cleanly when the process
// is out of fds, unless one is reserved already. Safe for concurrent use:
// the poller takes the reserve, and the refused connection's teardown
// restores it.
func (a *acceptor) openSpare() {
	if a.spare.Load() >= 0 {
		return
	}
	fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	if !a.spare.CompareAndSwap(-1, int64(fd)) {
		syscall.Close(fd) // restored meanwhile
	}
}

// closeSpare gives the reserve fd up for good (shutdown).
func (a *acceptor) closeSpare() {
	if fd := a.spare.Swap(-1); fd >= 0 {
		syscall.Close(int(fd))
	}
}

// refuseOne uses the reserve fd to take one pending connection off the
// listen queue and answer it, so a client past the fd limit is refused
// instead of left hanging. Reports whether it did. Poller goroutine only.
//
// The refused connection is read like any other, so that /healthz still
// answers 200 to a liveness probe (the server is full, not dead) while
// everything else gets 503. Its teardown restores the reserve.
func (a *acceptor) refuseOne() bool {
	a.openSpare() // in case a restore failed earlier
	fd := a.spare.Swap(-1)
	if fd < 0 {
		return false
	}
	syscall.Close(int(fd))
	cfd, err := accept(a.srv.lnFd)
	if err != nil {
		a.openSpare()
		return false
	}
	a.srv.register(cfd, true)
	return true
}

// onEvent accepts up to a budget, then re-arms the listener. When the
// process is out of fds it backs off (5 ms doubling to 1 s) instead of
// spinning on a listener that stays readable.
func (a *acceptor) onEvent(ev netpoll.EpollEvent) {
	if ev&0x20 != 0 { // poller closed
		return
	}
	s := a.srv
	for range 128 {
		fd, err := accept(s.lnFd)
		switch {
		case err == nil:
			a.backoff = 0
			if s.overloaded() {
				s.shedNow(fd)
			} else {
				s.register(fd, false)
			}
			continue
		case err == syscall.EAGAIN:
		case err == syscall.EINTR || err == syscall.ECONNABORTED:
			continue
		case errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM):
			s.metrics.acceptErrors.Inc()
			if a.refuseOne() {
				continue // refused cleanly; the next one may fit again
			}
			a.backoff = min(max(2*a.backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept: out of resources; backing off", "err", err, "backoff", a.backoff)
			time.AfterFunc(a.backoff, a.rearm)
			return
		default:
			if s.draining.Load() {
				return
			}
			s.metrics.acceptErrors.Inc()
			s.log.Error("accept", "err", err)
		}
		break
	}
	a.rearm()
}

// accept is accept4(2) without the peer's address, which nothing here
// reads: syscall.Accept4 allocates it per connection, and that garbage,
// interleaved in the heap with the small long-lived objects of the clients
// accepted at the same time, stays resident after a storm.
func accept(lnFd int) (int, error) {
	fd, _, errno := syscall.Syscall6(syscall.SYS_ACCEPT4, uintptr(lnFd), 0, 0, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

// shedNow refuses a connection while the pool is overloaded, without
// giving it to the pool: a canned 503 fits any fresh socket buffer.
func (s *Server) shedNow(fd int) {
	response503.count(s.metrics)
	_, _ = syscall.Write(fd, response503.bytes)
	_ = syscall.Close(fd)
}

func (a *acceptor) rearm() {
	_ = a.srv.ep.Mod(a.srv.lnFd, netpoll.EPOLLIN|netpoll.EPOLLONESHOT)
}

// register adds an accepted socket to the reactor. An overflow connection
// came in past the fd limit: it is only answered (see refuseOne).
func (s *Server) register(fd int, overflow bool) {
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	c := newConn(s, fd, time.Now().UnixNano())
	c.overflow = overflow
	s.nconns.Add(1)
	s.accepted.Add(1)
	s.metrics.accepted.Inc()
	s.conns.add(c)
	if err := s.ep.Add(fd, netpoll.EPOLLIN|netpoll.EPOLLRDHUP|netpoll.EPOLLONESHOT, c.onEvent); err != nil {
		s.log.Error("epoll add", "err", err)
		c.torn = true
		s.conns.remove(c)
		syscall.Close(fd)
		s.nconns.Add(-1)
	}
}
