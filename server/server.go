// Package server is gochat's chat server: an epoll reactor (easygo netpoll)
// that wakes only readable sockets, a bounded worker pool that decodes
// frames, and a hub that broadcasts each message, encoded once, to every
// member.
//
// Goroutines: one epoll wait loop (easygo), one keeper (timers), the pool's
// workers (bounded by Config.Workers), net/http's for the side routes, and
// with -nats one relay plus the NATS client's (cluster.go). None of them
// grows with the number of WebSocket connections.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/mailru/easygo/netpoll"

	"gochat/pool"
)

// Server is a gochat server. New binds the listener; Serve runs it until
// Shutdown. Methods are safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	ln      net.Listener
	lnFd    int
	ep      *netpoll.Epoll
	pool    *pool.Pool
	hub     *hub
	conns   connSet
	metrics *metrics
	http    *http.Server
	httpLn  *chanListener
	accept  acceptor
	keeper  keeper

	draining atomic.Bool  // shutdown started: refuse upgrades, no leave notices
	nconns   atomic.Int64 // connections owned by the reactor
	wsConns  atomic.Int64 // upgraded connections, for MaxConns

	overloadSince atomic.Int64 // unix nanos since the pool backlog passed OverloadQueue; 0 when not

	drainOnce sync.Once
	drained   chan struct{} // closed when draining and nconns reaches 0
	stop      chan struct{} // closed when Serve must return
	stopOnce  sync.Once
	served    chan struct{} // closed when Serve has returned

	testHookMessage func([]byte) // tests inject faults into message handling

	cluster *cluster // NATS relay to the other nodes; nil on a single node
}

// New validates cfg (after filling defaults), binds cfg.Addr and prepares the
// reactor. log may be nil.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	cfg = cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:     cfg,
		log:     log,
		drained: make(chan struct{}),
		stop:    make(chan struct{}),
		served:  make(chan struct{}),
	}
	var err error
	if s.pool, err = pool.New(cfg.Workers, func(v any) {
		s.log.Error("panic escaped a task", "panic", v)
	}); err != nil {
		return nil, err
	}
	s.hub = newHub(s, max(4, cfg.Workers))
	s.conns.init(64)
	s.metrics = newMetrics(s)
	if s.ep, err = netpoll.EpollCreate(&netpoll.EpollConfig{OnWaitError: func(err error) {
		s.log.Error("epoll wait", "err", err)
	}}); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("gochat: epoll: %w", err)
	}
	if s.ln, err = net.Listen("tcp", cfg.Addr); err != nil {
		s.ep.Close()
		s.pool.Close()
		return nil, fmt.Errorf("gochat: listen: %w", err)
	}
	// Accept on the listener's own fd, taken without dup: net.Listener keeps
	// it open and non-blocking, and nothing else waits on it.
	rc, err := s.ln.(*net.TCPListener).SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { s.lnFd = int(fd) })
	}
	if err != nil {
		s.ln.Close()
		s.ep.Close()
		s.pool.Close()
		return nil, fmt.Errorf("gochat: listener fd: %w", err)
	}
	s.accept.srv = s
	s.accept.openSpare()
	s.keeper.srv = s
	s.httpLn = newChanListener(s.ln.Addr())
	s.http = &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: cfg.HandshakeTimeout,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    maxHandshake,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	// Each request comes through the reactor on a fresh connection, so /ws
	// is always routed to the upgrader, never to a kept-alive net/http conn.
	s.http.SetKeepAlivesEnabled(false)
	if cfg.NATS != "" {
		if s.cluster, err = newCluster(s); err != nil {
			s.ln.Close()
			if s.accept.spare >= 0 {
				_ = syscall.Close(s.accept.spare)
			}
			s.ep.Close()
			s.pool.Close()
			return nil, err
		}
	}
	return s, nil
}

// Addr is the bound listen address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Config returns the effective configuration.
func (s *Server) Config() Config { return s.cfg }

// Serve runs the server until Shutdown. It returns nil after a shutdown.
func (s *Server) Serve() error {
	defer close(s.served)
	go func() { _ = s.http.Serve(s.httpLn) }()
	if err := s.ep.Add(s.lnFd, netpoll.EPOLLIN|netpoll.EPOLLONESHOT, s.accept.onEvent); err != nil {
		return fmt.Errorf("gochat: register listener: %w", err)
	}
	go s.keeper.run()
	s.log.Info("gochat serving", "addr", s.Addr().String(), "workers", s.cfg.Workers)
	<-s.stop
	return nil
}

// Shutdown drains the server (SPEC §5): admission stops at once (readyz 503,
// upgrades 503), every client gets close 1001 without leave notices, and the
// close handshakes may take until ctx ends; then the rest are dropped and
// everything is released. Serve returns when Shutdown does.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	s.log.Info("shutting down", "connections", s.nconns.Load())
	s.drainedCheck()
	s.conns.each(func(c *Conn) {
		if c.getPhase() == phaseHandshake {
			c.requestClose(forceClose)
		} else {
			c.requestClose(uint32(ws.StatusGoingAway))
		}
	})
	var err error
	select {
	case <-s.drained:
	case <-ctx.Done():
		err = ctx.Err()
		s.conns.each(func(c *Conn) { c.requestClose(forceClose) })
		select {
		case <-s.drained:
		case <-time.After(time.Second): // forced teardowns are quick; never hang exit
		}
	}
	s.keeper.stopAndWait()
	_ = s.ep.Del(s.lnFd)
	_ = s.ln.Close()
	if s.accept.spare >= 0 {
		_ = syscall.Close(s.accept.spare)
	}
	_ = s.http.Close()
	_ = s.httpLn.Close()
	if s.cluster != nil {
		s.cluster.close() // relays what was sent before the drain, then drains NATS
	}
	s.pool.Close()
	_ = s.ep.Close()
	s.stopOnce.Do(func() { close(s.stop) })
	select {
	case <-s.served:
	default:
	}
	return err
}

// connClosed accounts for a torn-down connection.
func (s *Server) connClosed(c *Conn) {
	if c.upgraded {
		s.wsConns.Add(-1)
	}
	s.nconns.Add(-1)
	s.drainedCheck()
}

func (s *Server) drainedCheck() {
	if s.draining.Load() && s.nconns.Load() == 0 {
		s.drainOnce.Do(func() { close(s.drained) })
	}
}

// overloaded reports sustained pool overload: the backlog has stayed past
// OverloadQueue for longer than overloadGrace, so admitting more clients
// would only slow everyone. A burst that the workers catch up with (a
// reconnect storm) sheds nobody.
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
	spare   int           // reserve fd (/dev/null) given up to refuse a client at EMFILE; -1 if none
}

// openSpare reserves one fd for refusing clients cleanly when the process
// is out of fds.
func (a *acceptor) openSpare() {
	fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		fd = -1
	}
	a.spare = fd
}

// refuseOne uses the reserve fd to take one pending connection off the
// listen queue and answer it 503, so a client past the fd limit is refused
// instead of left hanging. Reports whether it did.
func (a *acceptor) refuseOne() bool {
	if a.spare < 0 {
		return false
	}
	syscall.Close(a.spare)
	a.spare = -1
	fd, _, err := syscall.Accept4(a.srv.lnFd, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
	if err == nil {
		a.srv.shedNow(fd)
	}
	a.openSpare()
	return err == nil
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
		fd, _, err := syscall.Accept4(s.lnFd, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
		switch {
		case err == nil:
			a.backoff = 0
			if s.overloaded() {
				s.shedNow(fd)
			} else {
				s.register(fd)
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

// shedNow refuses a connection while the pool is overloaded, without
// giving it to the pool: a canned 503 fits any fresh socket buffer.
func (s *Server) shedNow(fd int) {
	s.metrics.shed.Inc()
	_, _ = syscall.Write(fd, response503)
	_ = syscall.Close(fd)
}

var response503 = []byte("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")

func (a *acceptor) rearm() {
	_ = a.srv.ep.Mod(a.srv.lnFd, netpoll.EPOLLIN|netpoll.EPOLLONESHOT)
}

// register adds an accepted socket to the reactor.
func (s *Server) register(fd int) {
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	c := newConn(s, fd, time.Now().UnixNano())
	s.nconns.Add(1)
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

// connSet holds every connection the reactor owns, sharded so that adding
// and removing do not contend. The keeper and Shutdown iterate it.
type connSet struct {
	shards []connShard
}

type connShard struct {
	mu    sync.Mutex // Protects conns.
	conns map[*Conn]struct{}
}

func (cs *connSet) init(n int) {
	cs.shards = make([]connShard, n)
	for i := range cs.shards {
		cs.shards[i].conns = make(map[*Conn]struct{})
	}
}

func (cs *connSet) shard(c *Conn) *connShard { return &cs.shards[c.fd%len(cs.shards)] }

func (cs *connSet) add(c *Conn) {
	sh := cs.shard(c)
	sh.mu.Lock()
	sh.conns[c] = struct{}{}
	sh.mu.Unlock()
}

func (cs *connSet) remove(c *Conn) {
	sh := cs.shard(c)
	sh.mu.Lock()
	delete(sh.conns, c)
	sh.mu.Unlock()
}

// each calls fn for every connection, one shard at a time, outside the
// shard's lock (on a copy), so fn may take any lock.
func (cs *connSet) each(fn func(*Conn)) {
	var snap []*Conn
	for i := range cs.shards {
		sh := &cs.shards[i]
		sh.mu.Lock()
		snap = snap[:0]
		for c := range sh.conns {
			snap = append(snap, c)
		}
		sh.mu.Unlock()
		for _, c := range snap {
			fn(c)
		}
	}
}
