package server

import (
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
)

// hub is the chat room: the joined members, their names, and the broadcast
// pipeline.
//
// Broadcast. publish encodes a message once (JSON and frame header) and
// appends it to queue. Rounds deliver it: a round takes everything queued as
// one batch and fans it out, each shard of members on its own worker, one
// write(2) per member carrying the whole batch. At most one round is in
// flight, which keeps every sender's messages in order at every receiver;
// under load, messages that arrive during a round (and the short rest after
// it, see nextRound) make the next batch larger, so the cost per message
// falls as the load rises.
//
// Lock order: namesMu, then shard.mu. qmu and Conn.wmu are never held with
// another hub lock.
type hub struct {
	srv *Server

	namesMu sync.Mutex       // Protects names.
	names   map[string]*Conn // uniqueness key -> member

	shards []shard

	qmu      sync.Mutex // Protects following.
	queue    []byte     // frames waiting for the next round
	queued   int        // frames in queue
	queuedAt time.Time  // when the oldest frame in queue was published
	running  bool       // a round is in flight, or due on a timer (nextRound)
	batch    []byte     // the round's frames; read-only while running
	spare    []byte     // the previous round's buffer, reused

	batchFrames int          // frames in batch; written only between rounds
	batchAt     time.Time    // queuedAt of batch
	pending     atomic.Int32 // shard tasks of the round not yet done

	roundsDone atomic.Uint64 // completed rounds (tests wait on it)

	// Round timing, touched only by whoever starts or ends the round in
	// flight (never two at once).
	roundStart time.Time
	roundEnd   time.Time
	roundTook  time.Duration
	maxRest    time.Duration // cap on the rest between rounds: maxRest, 0 in micro-benchmarks
}

// maxRest caps the pause between rounds.
const maxRest = 25 * time.Millisecond

// maxQueue bounds the bytes waiting for a round; beyond it publish refuses
// (the sender gets an Error, nothing accepted is ever dropped).
const maxQueue = 8 << 20

// shard is a slice of the members, fanned out by one task per round.
type shard struct {
	h       *hub
	mu      sync.Mutex // Protects members.
	members []*Conn
	snap    []*Conn // the round's copy of members; owned by the shard task
}

func newHub(s *Server, nshards int) *hub {
	h := &hub{srv: s, names: make(map[string]*Conn), shards: make([]shard, nshards), maxRest: maxRest}
	for i := range h.shards {
		h.shards[i].h = h
	}
	return h
}

// join registers c under name if the name is free. Called by c's owner.
func (h *hub) join(c *Conn, name, key string) error {
	h.namesMu.Lock()
	defer h.namesMu.Unlock()
	if _, taken := h.names[key]; taken {
		return errUsernameTaken
	}
	h.names[key] = c
	c.name, c.key, c.joined = name, key, true
	c.phase.Store(uint32(phaseJoined))
	sh := &h.shards[c.fd%len(h.shards)]
	sh.mu.Lock()
	c.member = len(sh.members)
	sh.members = append(sh.members, c)
	sh.mu.Unlock()
	return nil
}

// leave unregisters c and, unless the server is shutting down, tells the
// others. Called by c's owner; does nothing if c is not a member, so a
// connection leaves exactly once.
func (h *hub) leave(c *Conn) {
	if !c.joined {
		return
	}
	c.joined = false
	h.namesMu.Lock()
	delete(h.names, c.key)
	sh := &h.shards[c.fd%len(h.shards)]
	sh.mu.Lock()
	last := len(sh.members) - 1
	moved := sh.members[last]
	sh.members[c.member] = moved
	moved.member = c.member
	sh.members[last] = nil
	sh.members = sh.members[:last]
	c.member = -1
	sh.mu.Unlock()
	h.namesMu.Unlock()
	h.srv.metrics.leaves.Inc()
	h.srv.log.Debug("leave", "fd", c.fd)
	if h.srv.cfg.presence() && !h.srv.draining.Load() {
		h.notice(c.name, " left the chat")
	}
}

// members returns the number of joined clients.
func (h *hub) members() int {
	h.namesMu.Lock()
	defer h.namesMu.Unlock()
	return len(h.names)
}

// notice broadcasts a System notice "<name><what>".
func (h *hub) notice(name, what string) {
	var b [maxUsername*4 + 32]byte
	content := append(append(b[:0], name...), what...)
	_ = h.publish(systemName, content)
}

// publish broadcasts a message from name (a member or System) to every
// member, the sender included, and on a cluster relays it to the other
// nodes (cluster.go); messages from other nodes use enqueueLocal. Safe for
// concurrent use.
func (h *hub) publish(name string, content []byte) error {
	if err := h.enqueueLocal(name, content); err != nil {
		return err
	}
	if cl := h.srv.cluster; cl != nil {
		cl.publish(name, content)
	}
	return nil
}

// enqueueLocal queues a message for the local members. It only reads name
// and content during the call.
func (h *hub) enqueueLocal(name string, content []byte) error {
	h.qmu.Lock()
	if len(h.queue) > maxQueue {
		h.qmu.Unlock()
		h.srv.metrics.busyRejects.Inc()
		return errServerBusy
	}
	if h.queued == 0 {
		h.queuedAt = time.Now()
	}
	// Encode payload-first after room for the longest header, then move the
	// header in front: one encode, no temporary buffer.
	start := len(h.queue)
	h.queue = append(h.queue, make([]byte, maxHeaderSize)...)
	// content is only read during the call, so viewing it as a string is safe.
	h.queue = appendChat(h.queue, name, unsafe.String(unsafe.SliceData(content), len(content)))
	payload := len(h.queue) - start - maxHeaderSize
	var hdr [maxHeaderSize]byte
	hs := putHeader(hdr[:], ws.OpText, payload)
	hn := maxHeaderSize - hs
	copy(h.queue[start+hn:], h.queue[start+maxHeaderSize:])
	copy(h.queue[start:], hdr[hs:])
	h.queue = h.queue[:len(h.queue)-(maxHeaderSize-hn)]
	h.queued++
	idle := !h.running
	if idle {
		h.running = true // a round is now due: started below or by a timer
	}
	h.qmu.Unlock()
	h.srv.metrics.published.Inc()
	if idle {
		h.nextRound()
	}
	return nil
}

// nextRound starts a round with what is queued, once the fan-out has rested
// half as long as its last round took (at most maxRest), and at least
// RoundInterval has passed since that round started. The more members, the
// longer a round, the more messages the next one carries: the cost per
// delivery falls as load rises, since one write(2) per member per round is
// the dominant cost. The cap keeps bigger batches (longer rounds) from
// feeding back into ever longer rests. An idle hub starts a round at once,
// so this adds no latency at rest. Called with running set and no round in
// flight.
func (h *hub) nextRound() {
	now := time.Now()
	rest := min(h.roundTook/2, h.maxRest)
	wait := max(h.srv.cfg.RoundInterval-now.Sub(h.roundStart), rest-now.Sub(h.roundEnd))
	if wait > 0 {
		time.AfterFunc(wait, h.nextRound)
		return
	}
	h.qmu.Lock()
	h.takeBatchLocked()
	h.qmu.Unlock()
	h.roundStart = now
	h.startRound()
}

// takeBatchLocked moves the queue into batch. Caller holds qmu.
func (h *hub) takeBatchLocked() {
	h.batch, h.queue = h.queue, h.spare[:0]
	h.spare = nil
	h.batchFrames, h.batchAt = h.queued, h.queuedAt
	h.queued = 0
}

func (h *hub) startRound() {
	h.pending.Store(int32(len(h.shards)))
	for i := range h.shards {
		if h.srv.pool.Schedule(&h.shards[i]) != nil {
			h.shardDone() // pool closed at shutdown: nobody to deliver to
		}
	}
}

// Run fans the current batch out to the shard's members. It is the shard's
// task in a round.
func (sh *shard) Run() {
	h := sh.h
	sh.mu.Lock()
	sh.snap = append(sh.snap[:0], sh.members...)
	sh.mu.Unlock()
	n, written := 0, 0
	for i, c := range sh.snap {
		ok, w := c.deliver(h.batch)
		if ok {
			n++
		}
		written += w
		sh.snap[i] = nil
	}
	if n > 0 {
		h.srv.metrics.deliveries.Add(float64(n * h.batchFrames))
		h.srv.metrics.bytesOut.Add(float64(written))
	}
	h.shardDone()
}

// shardDone ends the round when its last shard finishes, and starts the next
// one if messages arrived meanwhile.
func (h *hub) shardDone() {
	if h.pending.Add(-1) != 0 {
		return
	}
	h.roundEnd = time.Now()
	h.roundTook = h.roundEnd.Sub(h.roundStart)
	h.srv.metrics.fanout.Observe(h.roundEnd.Sub(h.batchAt).Seconds())
	h.srv.metrics.rounds.Inc()
	h.roundsDone.Add(1)
	h.qmu.Lock()
	h.spare = h.batch[:0]
	h.batch = nil
	if h.queued == 0 {
		h.running = false
		h.qmu.Unlock()
		return
	}
	h.qmu.Unlock()
	h.nextRound()
}
