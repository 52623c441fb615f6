package server

import (
	"runtime/debug"
	"time"
)

// quietRelease is how long the server must see no new connection and no
// broadcast round before it gives freed memory back to the OS.
const quietRelease = 2 * time.Second

// releaser gives freed memory back to the OS once the server goes quiet
// after a burst (a reconnect storm, a wave of joins): the Go heap keeps its
// GC headroom and freed pages until the next collection and the background
// scavenger catch up, which on an idle server can take minutes, so the
// garbage of a storm would stay resident while its clients sit idle. One
// forced collection per quiet spell costs a few milliseconds at 10,000
// connections and nothing while the server is busy. Before it, the hub
// drops the broadcast buffers of rooms that are not broadcasting (a room
// that spoke once keeps them otherwise: about 700 bytes a room, which in
// many small rooms is as much again per connection as the connection).
// Keeper goroutine only.
type releaser struct {
	seen     uint64 // activity when last looked at
	since    int64  // unix nanos since activity last changed
	released bool   // released since the last change
}

func (r *releaser) check(s *Server, now int64) {
	act := s.accepted.Load() + s.hub.Rounds()
	if act != r.seen || r.since == 0 {
		r.seen, r.since, r.released = act, now, false
		return
	}
	if r.released || now-r.since < int64(quietRelease) {
		return
	}
	r.released = true
	s.hub.Trim()
	debug.FreeOSMemory()
	s.metrics.idleCollections.Inc()
}
