package main

import (
	"context"
	"sync"
	"time"
)

// -rejoin: a client that the server disconnects while messages flow (its
// node was killed, say) is dialled again, as itself, until it is back or
// the measured window closes. A client back this way is never a receiver:
// it missed messages while it was gone, so counting it would blur lost;
// the report counts them, and what they received, per node.
type rejoiner struct {
	f      *fleet
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	clients []*client // back, in the order they came back
}

// rejoinPoll is how often the clients are checked for disconnects, and
// the pause between two dials of one client.
const rejoinPoll = 100 * time.Millisecond

// startRejoin starts watching f's reading clients.
func startRejoin(ctx context.Context, f *fleet) *rejoiner {
	ctx, cancel := context.WithCancel(ctx)
	r := &rejoiner{f: f, cancel: cancel}
	tried := make([]bool, len(f.clients))
	r.wg.Go(func() {
		t := time.NewTicker(rejoinPoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			for i, c := range f.clients {
				if tried[i] || c.slow || !c.up.Load() || !c.dead.Load() {
					continue
				}
				tried[i] = true
				r.wg.Go(func() { r.redial(ctx, c) })
			}
		}
	})
	return r
}

// redial dials a new connection for gone's id and name until it joins.
func (r *rejoiner) redial(ctx context.Context, gone *client) {
	for {
		c := &client{f: r.f, id: gone.id, name: gone.name, node: gone.node}
		if r.f.dial(ctx, c) == nil {
			r.mu.Lock()
			r.clients = append(r.clients, c)
			r.mu.Unlock()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(rejoinPoll):
		}
	}
}

// stop ends the watching and the dials in progress and returns the
// clients that came back. It may be called again; nil-safe.
func (r *rejoiner) stop() []*client {
	if r == nil {
		return nil
	}
	r.cancel()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.clients
}
