package server

import "sync"

// connSet holds every connection the reactor owns, indexed by fd: a slot
// per fd number costs 8 bytes where a map entry cost several times that,
// and fd numbers are dense. The keeper and Shutdown iterate it.
type connSet struct {
	mu   sync.Mutex // Protects byFD.
	byFD []*Conn    // the connection that owns each fd number, or nil
}

// add records c under its fd. A connection torn down a moment ago may
// still hold the slot (its fd was closed, then reused by the kernel): the
// new one takes it.
func (cs *connSet) add(c *Conn) {
	cs.mu.Lock()
	if int(c.fd) >= len(cs.byFD) {
		cs.byFD = append(cs.byFD, make([]*Conn, int(c.fd)+1-len(cs.byFD)+len(cs.byFD)/2)...)
	}
	cs.byFD[c.fd] = c
	cs.mu.Unlock()
}

// remove forgets c, unless its fd's slot already belongs to a newer one.
func (cs *connSet) remove(c *Conn) {
	cs.mu.Lock()
	if int(c.fd) < len(cs.byFD) && cs.byFD[c.fd] == c {
		cs.byFD[c.fd] = nil
	}
	cs.mu.Unlock()
}

// each calls fn for every connection, a chunk of slots at a time, outside
// the lock (on a copy), so fn may take any lock.
func (cs *connSet) each(fn func(*Conn)) {
	const chunk = 1024
	snap := make([]*Conn, 0, chunk)
	for start := 0; ; start += chunk {
		cs.mu.Lock()
		if start >= len(cs.byFD) {
			cs.mu.Unlock()
			return
		}
		snap = snap[:0]
		for _, c := range cs.byFD[start:min(start+chunk, len(cs.byFD))] {
			if c != nil {
				snap = append(snap, c)
			}
		}
		cs.mu.Unlock()
		for _, c := range snap {
			fn(c)
		}
	}
}
