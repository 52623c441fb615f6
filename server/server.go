// Package server is gochat's chat server: an epoll reactor (easygo netpoll)
// that wakes only readable sockets, a bounded worker pool that decodes
// frames, and a hub that broadcasts each message, encoded once, to every
// member.
//
// Layers, each importing only those below it:
//
//	server                  transport: accept, upgrade, reactor, Conn (read.go,
//	  │                     write.go, close.go), keeper, HTTP routes, metrics
//	  ├─ internal/natsrelay   the hub's Relay to other nodes over NATS
//	  ├─ internal/chat        application: Hub (members, broadcast rounds),
//	  │                       Session (join, chat rules, budgets)
//	  ├─ internal/chatmsg     chat JSON codec, username rules, error texts
//	  └─ internal/wsframe     RFC 6455 codec and close causes
//
// A message goes up once: Conn reads and reassembles it (read.go) and hands
// it to its chat.Session, which publishes it on the chat.Hub; the hub's
// rounds hand the encoded frames down to every member through the
// chat.Transport that Conn implements (write.go), and to the Relay if there
// is one. Nothing below calls back up except through those two interfaces.
//
// Goroutines: one epoll wait loop (easygo), one keeper (timers), the pool's
// workers (bounded by Config.Workers), net/http's for the side routes, and
// with -nats the relay's plus the NATS client's. None of them grows with
// the number of WebSocket connections.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailru/easygo/netpoll"

	"gochat/pool"
	"gochat/server/internal/chat"
	"gochat/server/internal/natsrelay"
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
	hub     *chat.Hub
	relay   *natsrelay.Relay // nil on a single node
	conns   connSet
	metrics *metrics
	http    *http.Server
	httpLn  *chanListener
	accept  acceptor
	keeper  keeper

	draining atomic.Bool   // shutdown started: refuse upgrades, no leave notices
	nconns   atomic.Int64  // connections owned by the reactor
	accepted atomic.Uint64 // connections ever accepted (the keeper's releaser watches it)
	wsConns  atomic.Int64  // upgraded connections, for MaxConns
	outbound atomic.Int64  // bytes pending in every Conn.out (write.go)
	inbound  atomic.Int64  // bytes of every Conn's partial-input buffers (read.go)

	grower      atomic.Pointer[Conn] // the one Conn whose partial input may grow past MaxInbound (read.go)
	growerSince atomic.Int64         // unix nanos since grower took the slot

	overloadSince atomic.Int64 // unix nanos since the pool backlog passed OverloadQueue; 0 when not

	drainOnce sync.Once
	drained   chan struct{} // closed when draining and wsConns reaches 0
	stop      chan struct{} // closed when Serve must return
	stopOnce  sync.Once
	served    chan struct{} // closed when Serve has returned

	testHookMessage func([]byte) // tests inject faults into message handling
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
	s.metrics = newMetrics(s)
	var relay chat.Relay // stays a nil interface on a single node
	if cfg.NATS != "" {
		log.Info("nats credentials", "auth", cfg.natsAuth()) // redacted
		if s.relay, err = natsrelay.New(natsrelay.Config{
			Auth:       cfg.natsAuth(),
			URL:        cfg.NATS,
			Subject:    cfg.NATSSubject,
			MaxContent: cfg.MaxContent,
			History:    max(cfg.History, 0),
			HistoryAge: cfg.HistoryAge,
		}, s.metrics.reg, log); err != nil {
			s.pool.Close()
			return nil, err
		}
		relay = s.relay
	}
	s.hub = chat.NewHub(chat.Config{
		MaxContent:    cfg.MaxContent,
		Rate:          cfg.Rate,
		Burst:         cfg.Burst,
		ErrorBudget:   cfg.ErrorBudget,
		Presence:      cfg.presence(),
		RoundInterval: max(cfg.RoundInterval, 0),
		Shards:        max(4, cfg.Workers),
		// A reader that keeps up has at most a quarter of its send queue
		// pending after any round.
		MaxBatch:        max(cfg.SendQueue/4, 4<<10),
		PresenceSummary: cfg.PresenceSummary,
		PresenceMax:     cfg.PresenceMax,
		MaxRooms:        cfg.MaxRooms,
		History:         cfg.History,
		HistoryAge:      cfg.HistoryAge,
		OutboundFull:    func() bool { return s.outbound.Load() > int64(cfg.MaxOutbound) },
	}, s.pool, &s.metrics.chat, relay, log)
	if s.relay != nil {
		s.relay.Start(s.hub)
	}
	fail := func(err error) (*Server, error) {
		if s.relay != nil {
			s.relay.Close()
		}
		if s.ep != nil {
			s.ep.Close()
		}
		s.pool.Close()
		return nil, err
	}
	if s.ep, err = netpoll.EpollCreate(&netpoll.EpollConfig{OnWaitError: func(err error) {
		s.log.Error("epoll wait", "err", err)
	}}); err != nil {
		return fail(fmt.Errorf("gochat: epoll: %w", err))
	}
	if s.ln, err = net.Listen("tcp", cfg.Addr); err != nil {
		return fail(fmt.Errorf("gochat: listen: %w", err))
	}
	// Accept on the listener's own fd, taken without dup: net.Listener keeps
	// it open and non-blocking, and nothing else waits on it.
	rc, err := s.ln.(*net.TCPListener).SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { s.lnFd = int(fd) })
	}
	if err != nil {
		s.ln.Close()
		return fail(fmt.Errorf("gochat: listener fd: %w", err))
	}
	s.accept.srv = s
	s.accept.spare.Store(-1)
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
		if s.draining.Load() {
			return nil // Shutdown came first and closed the listener
		}
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
	s.hub.Drain()
	s.log.Info("shutting down", "connections", s.nconns.Load())
	s.drainedCheck()
	s.conns.each(func(c *Conn) {
		if c.getPhase() == phaseHandshake {
			c.requestClose(causeDrop)
		} else {
			c.requestClose(causeShutdown)
		}
	})
	var err error
	select {
	case <-s.drained:
	case <-ctx.Done():
		err = ctx.Err()
	}
	// Stop accepting, then drop whatever is left: clients that did not
	// finish their close handshakes in time, and requests that arrived
	// during the drain (refused, or still sending their head). Connections
	// that keep arriving never hold the drain up: it waits only for the
	// WebSocket clients it is closing.
	_ = s.ep.Del(s.lnFd)
	_ = s.ln.Close()
	s.conns.each(func(c *Conn) { c.requestClose(causeDrop) })
	for deadline := time.Now().Add(time.Second); s.nconns.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond) // forced teardowns are quick; never hang exit
	}
	s.keeper.stopAndWait()
	s.accept.closeSpare()
	_ = s.http.Close()
	_ = s.httpLn.Close()
	if s.relay != nil {
		s.relay.Close() // relays what was sent before the drain, then drains NATS
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

// inboundOver reports whether the connections' partial-input buffers are
// over Config.MaxInbound.
func (s *Server) inboundOver() bool { return s.inbound.Load() > int64(s.cfg.MaxInbound) }

// connClosed accounts for a torn-down connection.
func (s *Server) connClosed(c *Conn) {
	if c.upgraded {
		s.wsConns.Add(-1)
	}
	s.nconns.Add(-1)
	s.drainedCheck()
}

// drainedCheck closes drained once shutdown has begun and no WebSocket
// client is left.
func (s *Server) drainedCheck() {
	if s.draining.Load() && s.wsConns.Load() == 0 {
		s.drainOnce.Do(func() { close(s.drained) })
	}
}
