package chat

import (
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/gobwas/ws"

	"gochat/server/internal/chatmsg"
	"gochat/server/internal/wsframe"
)

// rounds is the broadcast pipeline. Publish encodes a message once (JSON
// and frame header) and appends it to queue. Rounds deliver it: a round
// takes everything queued as one batch and fans it out, each shard of
// members on its own worker, one Transport.Deliver (one write(2)) per member
// carrying the whole batch. At most one round is in flight, which keeps
// every sender's messages in order at every receiver; under load, messages
// that arrive during a round (and the short rest after it, see next) make
// the next batch larger, so the cost per message falls as the load rises.
type rounds struct {
	h *Hub

	qmu      sync.Mutex // Protects following.
	queue    []byte     // frames waiting for the next round
	queued   int        // frames in queue
	queuedAt time.Time  // when the oldest frame in queue was published
	running  bool       // a round is in flight, or due on a timer (next)
	spare    []byte     // the previous round's buffer, reused

	summaries [2]summary // joins and leaves waiting for the next round (presence.go)

	// The round in flight. Written only between rounds, read-only while
	// one runs.
	batch       []byte
	batchFrames int
	batchAt     time.Time
	pending     atomic.Int32 // shard tasks of the round not yet done

	done atomic.Uint64 // completed rounds

	// Round timing, touched only by whoever starts or ends the round in
	// flight (never two at once).
	start   time.Time
	end     time.Time
	took    time.Duration
	maxRest time.Duration // cap on the rest between rounds
}

// maxRest caps the pause between rounds.
const maxRest = 25 * time.Millisecond

// maxQueue bounds the bytes waiting for a round; beyond it Publish refuses
// (the sender gets an Error; nothing accepted is ever dropped).
const maxQueue = 8 << 20

func (r *rounds) init(h *Hub) { r.h, r.maxRest = h, maxRest }

// Rounds returns the number of completed broadcast rounds.
func (h *Hub) Rounds() uint64 { return h.rounds.done.Load() }

// Idle reports whether no round is in flight or due.
func (h *Hub) Idle() bool {
	h.rounds.qmu.Lock()
	defer h.rounds.qmu.Unlock()
	return !h.rounds.running
}

// Publish broadcasts a message from name (a member, or System) to every
// member, the sender included, and hands it to the relay for the other
// nodes. It reads name and content only during the call.
func (h *Hub) Publish(name string, content []byte) error {
	if err := h.rounds.enqueue(name, content); err != nil {
		return err
	}
	if h.relay != nil {
		h.relay.Publish(name, content)
	}
	return nil
}

// PublishRemote broadcasts a message that another node accepted to the
// members of this node only. It reads name and content only during the call.
func (h *Hub) PublishRemote(name, content []byte) error {
	return h.rounds.enqueue(unsafe.String(unsafe.SliceData(name), len(name)), content)
}

// enqueue queues a message for the local members.
func (r *rounds) enqueue(name string, content []byte) error {
	h := r.h
	r.qmu.Lock()
	if len(r.queue) > maxQueue {
		r.qmu.Unlock()
		h.metrics.BusyRejects.Inc()
		return chatmsg.ErrServerBusy
	}
	if r.emptyLocked() {
		r.queuedAt = time.Now()
	}
	// content is only read during the call, so viewing it as a string is safe.
	text := unsafe.String(unsafe.SliceData(content), len(content))
	r.queue = wsframe.AppendFramed(r.queue, ws.OpText, func(b []byte) []byte {
		return chatmsg.AppendChat(b, name, text)
	})
	r.queued++
	h.metrics.Published.Inc()
	r.kickLocked()
	return nil
}

// kickLocked makes sure a round is due and unlocks qmu: an idle hub starts
// one at once. Caller holds qmu.
func (r *rounds) kickLocked() {
	idle := !r.running
	r.running = true // a round is now due: started below, or by whoever runs one
	r.qmu.Unlock()
	if idle {
		r.next()
	}
}

// next starts a round with what is queued, once the fan-out has rested
// half as long as its last round took (at most maxRest), and at least
// RoundInterval has passed since that round started. The more members, the
// longer a round, the more messages the next one carries: the cost per
// delivery falls as load rises, since one write(2) per member per round is
// the dominant cost. The cap keeps bigger batches (longer rounds) from
// feeding back into ever longer rests. An idle hub starts a round at once,
// so this adds no latency at rest. Called with running set and no round in
// flight.
func (r *rounds) next() {
	now := time.Now()
	rest := min(r.took/2, r.maxRest)
	wait := max(r.h.cfg.RoundInterval-now.Sub(r.start), rest-now.Sub(r.end))
	if wait > 0 {
		time.AfterFunc(wait, r.next)
		return
	}
	if full := r.h.cfg.OutboundFull; full != nil && full() {
		// The members' pending output is over its global bound: let the
		// transport drain it first. Publishers meanwhile fill the queue up
		// to maxQueue and are then told the server is busy.
		time.AfterFunc(outboundWait, r.next)
		return
	}
	r.qmu.Lock()
	r.takeBatchLocked()
	r.qmu.Unlock()
	r.start = now
	shards := r.h.shards
	r.pending.Store(int32(len(shards)))
	for i := range shards {
		if r.h.pool.Schedule(&shards[i]) != nil {
			r.shardDone() // pool closed at shutdown: nobody to deliver to
		}
	}
}

// outboundWait is how long a round waits for the transport's pending
// output to fall back under its bound before it looks again.
const outboundWait = 5 * time.Millisecond

// takeBatchLocked moves what is queued, up to MaxBatch bytes of whole
// frames, into the round's batch; the rest waits for the next round.
// Caller holds qmu.
func (r *rounds) takeBatchLocked() {
	r.appendSummariesLocked()
	r.batchAt = r.queuedAt
	if limit := r.h.cfg.MaxBatch; limit > 0 && len(r.queue) > limit {
		end, frames := wsframe.SplitFrames(r.queue, limit)
		r.batch = append(r.spare[:0], r.queue[:end]...)
		r.queue = r.queue[:copy(r.queue, r.queue[end:])]
		r.batchFrames = frames
		r.queued -= frames
		r.queuedAt = time.Now() // the rest is as old as this round, at most
	} else {
		r.batch, r.queue = r.queue, r.spare[:0]
		r.batchFrames = r.queued
		r.queued = 0
	}
	r.spare = nil
}

// Run fans the current batch out to the shard's members. It is the shard's
// task in a round.
func (sh *shard) Run() {
	h := sh.h
	batch := h.rounds.batch
	sh.mu.Lock()
	sh.snap = append(sh.snap[:0], sh.members...)
	sh.mu.Unlock()
	n, written := 0, 0
	for i, s := range sh.snap {
		ok, w := s.t.Deliver(batch)
		if ok {
			n++
		}
		written += w
		sh.snap[i] = nil
	}
	if n > 0 {
		h.metrics.Deliveries.Add(float64(n * h.rounds.batchFrames))
		h.metrics.BytesOut.Add(float64(written))
	}
	h.rounds.shardDone()
}

// shardDone ends the round when its last shard finishes, and starts the next
// one if messages arrived meanwhile.
func (r *rounds) shardDone() {
	if r.pending.Add(-1) != 0 {
		return
	}
	r.end = time.Now()
	r.took = r.end.Sub(r.start)
	r.h.metrics.BroadcastLatency.Observe(r.end.Sub(r.batchAt).Seconds())
	r.h.metrics.Rounds.Inc()
	r.done.Add(1)
	r.qmu.Lock()
	r.spare = r.batch[:0]
	r.batch = nil
	if r.emptyLocked() {
		r.running = false
		r.qmu.Unlock()
		return
	}
	r.qmu.Unlock()
	r.next()
}

// SetMaxRest changes the cap on the rest between rounds (default 25 ms).
// Benchmarks set 0 to measure the fan-out itself; call before any publish.
func (h *Hub) SetMaxRest(d time.Duration) { h.rounds.maxRest = d }
