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
	srv  *Server
	once sync.Once
	quit chan struct{}
	done chan struct{}
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
	cfg := &k.srv.cfg
	silent := int64(cfg.PingInterval + cfg.PongTimeout)
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
		if now-c.lastPing.Load() >= int64(cfg.PingInterval) {
			c.sendPing(now)
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
