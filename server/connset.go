package server

import "sync"

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
