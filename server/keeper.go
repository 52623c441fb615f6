package server

import (
	"sync"
	"time"
)

// keeper is the one goroutine behind every connection's timers: a periodic
// sweep replaces a timer per connection. Each tick it enforces the
// handshake, join and close-linger deadlines, sends due pings, and drops
// peers silent for longer than PingInterval+PongTimeout.
type keeper struct {
	srv     *Server
	release releaser
	once    sync.Once
	quit    chan struct{}
	done    chan struct{}
}

// tick is the sweep period: fine enough for the shortest configured
// deadline, coarse enough to cost nothing at rest.
func (k *keeper) tick() time.Duration {
	cfg := k.srv.cfg
	d := min(cfg.PingInterval, cfg.PongTimeout, cfg.JoinTimeout, cfg.HandshakeTimeout, cfg.CloseLinger, cfg.WriteTimeout) / 4
	return min(max(d, 10*time.Millisecond), time.Second)
}

func (k *keeper) init() {
	k.once.Do(func() {
		k.quit = make(chan struct{})
		k.done = make(chan struct{})
	})
}

func (k *keeper) run() {
	k.init()
	defer close(k.done)
	t := time.NewTicker(k.tick())
	defer t.Stop()
	for {
		select {
		case <-k.quit:
			return
		case now := <-t.C:
			k.sweep(now.UnixNano())
		}
	}
}

func (k *keeper) sweep(now int64) {
	k.srv.overloaded() // samples the backlog, so that spikes apart never add up to "sustained"
	k.release.check(k.srv, now)
	if g := k.srv.grower.Load(); g != nil && now-k.srv.growerSince.Load() > int64(k.srv.cfg.HandshakeTimeout) {
		// The one client allowed past the inbound bound has not finished its
		// message in a handshake timeout: it may not hold everyone else up.
		k.srv.metrics.timeouts.WithLabelValues("assembly").Inc()
		g.requestClose(causeTooSlow)
		k.srv.grower.CompareAndSwap(g, nil)
	}
	cfg := &k.srv.cfg
	silent := int64(cfg.PingInterval + cfg.PongTimeout)
	// A client silent for a ping interval is pinged. The sweep sees it up to
	// a tick late, so it pings a tick early: the client always has the whole
	// pong timeout to answer before it counts as gone.
	pingAfter := int64(max(cfg.PingInterval-k.tick(), k.tick()))
	k.srv.conns.each(func(c *Conn) {
		switch c.getPhase() {
		case phaseHandshake:
			if now > c.deadline.Load() {
				k.srv.metrics.timeouts.WithLabelValues("handshake").Inc()
				c.requestClose(causeDrop)
			}
			return
		case phaseClosing:
			if now > c.deadline.Load() {
				c.requestClose(causeDrop)
			}
			return
		case phaseJoining:
			if now > c.deadline.Load() {
				k.srv.metrics.timeouts.WithLabelValues("join").Inc()
				c.requestClose(causeJoinTimeout)
				return
			}
		}
		if stuck := c.stuckAt.Load(); stuck != 0 && now-stuck > int64(cfg.WriteTimeout) {
			// Output pending and not one byte taken for WriteTimeout: the
			// peer does not read. Without this, clients just under their
			// send queue could hold the global outbound bound, and with it
			// every broadcast, for ever.
			k.srv.metrics.timeouts.WithLabelValues("write").Inc()
			k.srv.metrics.slowConsumers.Inc()
			c.requestClose(causeSlowConsumer)
			return
		}
		if now-c.lastRead.Load() > silent {
			k.srv.metrics.timeouts.WithLabelValues("pong").Inc()
			c.requestClose(causeDrop)
			return
		}
		if !c.flag(flagPinged) && now-c.lastRead.Load() >= pingAfter {
			c.sendPing() // silent for a ping interval: ask for a pong
		}
	})
}

// stopAndWait ends the sweep loop if it runs.
func (k *keeper) stopAndWait() {
	k.init()
	select {
	case <-k.quit:
		return
	default:
	}
	close(k.quit)
	select {
	case <-k.done:
	case <-time.After(time.Second):
	}
}
