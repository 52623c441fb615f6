package chat

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"gochat/server/internal/chatmsg"
	"gochat/server/internal/wsframe"
)

// rounds is a room's broadcast pipeline. enqueue encodes a message once in
// each wire form (the seed's two keys, and gochat.v2 with id, room and
// time), keeps it in the room's history, and appends it to the queues.
// Rounds deliver it: a round takes what is queued (up to MaxBatch bytes)
// as one batch and fans it out, each shard of members on its own worker,
// one Transport.Deliver (one write(2)) per member carrying the whole batch
// in that member's form. At most one round per room is in flight, which
// keeps every sender's messages in order at every receiver; under load,
// messages that arrive during a round (and the short rest after it, see
// next) make the next batch larger, so the cost per message falls as the
// load rises.
type rounds struct {
	room *Room

	qmu       sync.Mutex // Protects following.
	queue     []byte     // seed frames waiting for the next round
	queueV2   []byte     // the same messages as gochat.v2 frames
	queueIDs  []uint64   // their ids
	queuedAt  time.Time  // when the oldest of them was published
	running   bool       // a round is in flight, or due on a timer (next)
	spare     []byte     // the previous round's buffers, reused
	spareV2   []byte
	summaries [2]summary // joins and leaves waiting for the next round (presence.go)
	history   history    // the room's last messages (history.go)
	scratch   entry      // encodes messages when the room keeps no history
	freed     bool       // the room emptied and is gone: nothing more is queued
	taken     uint64     // batches taken so far; a batch's seq
	lastTaken uint64     // id of the newest message taken into a batch

	// The round in flight. Written only between rounds, read-only while
	// one runs.
	batch       []byte
	batchV2     []byte
	batchFrames int
	batchSeq    uint64
	batchAt     time.Time
	pending     atomic.Int32 // shard tasks of the round not yet done

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

// outboundWait is how long a round waits for the transport's pending
// output to fall back under its bound before it looks again.
const outboundWait = 5 * time.Millisecond

func (r *rounds) init(room *Room) {
	r.room, r.maxRest = room, room.hub.maxRest
	r.history.init(room.hub)
}

func (r *rounds) idle() bool {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	return !r.running
}

// enqueue queues a message for the room's members. It reads name and
// content only during the call.
func (r *rounds) enqueue(name, content string) error {
	r.qmu.Lock()
	if r.freed {
		r.qmu.Unlock()
		return nil // nobody is left to deliver to
	}
	if len(r.queueV2) > maxQueue {
		r.qmu.Unlock()
		r.room.hub.metrics.BusyRejects.Inc()
		return chatmsg.ErrServerBusy
	}
	r.enqueueLocked(name, content)
	r.kickLocked()
	return nil
}

// enqueueLocked gives the message an id, encodes it in both forms into its
// history entry and appends those to the queues. Caller holds qmu.
func (r *rounds) enqueueLocked(name, content string) {
	h := r.room.hub
	if r.emptyLocked() {
		r.queuedAt = time.Now()
	}
	id, now := h.ids.next(), time.Now()
	e := r.history.push(id, now)
	if e == nil {
		e = &r.scratch
	}
	e.seed = wsframe.AppendFramed(e.seed[:0], ws.OpText, func(b []byte) []byte {
		return chatmsg.AppendChat(b, name, content)
	})
	e.v2 = wsframe.AppendFramed(e.v2[:0], ws.OpText, func(b []byte) []byte {
		return chatmsg.AppendChatV2(b, name, content, id, r.room.name, now.UnixMilli())
	})
	r.queue = append(r.queue, e.seed...)
	r.queueV2 = append(r.queueV2, e.v2...)
	r.queueIDs = append(r.queueIDs, id)
	h.metrics.Published.Inc()
}

// kickLocked makes sure a round is due and unlocks qmu: an idle room starts
// one at once. Caller holds qmu.
func (r *rounds) kickLocked() {
	idle := !r.running
	r.running = true // a round is now due: started below, or by whoever runs one
	r.qmu.Unlock()
	if idle {
		r.next()
	}
}

// emptyLocked reports whether nothing waits for a round. Caller holds qmu.
func (r *rounds) emptyLocked() bool {
	return len(r.queueIDs) == 0 && r.summaries[joined].n == 0 && r.summaries[left].n == 0
}

// next starts a round with what is queued, once the fan-out has rested
// half as long as its last round took (at most maxRest), and at least
// RoundInterval has passed since that round started. The more members, the
// longer a round, the more messages the next one carries: the cost per
// delivery falls as load rises, since one write(2) per member per round is
// the dominant cost. The cap keeps bigger batches (longer rounds) from
// feeding back into ever longer rests. An idle room starts a round at once,
// so this adds no latency at rest. Called with running set and no round in
// flight.
func (r *rounds) next() {
	h := r.room.hub
	now := time.Now()
	rest := min(r.took/2, r.maxRest)
	wait := max(h.cfg.RoundInterval-now.Sub(r.start), rest-now.Sub(r.end))
	if wait > 0 {
		time.AfterFunc(wait, r.next)
		return
	}
	if full := h.cfg.OutboundFull; full != nil && full() {
		// The members' pending output is over its global bound: let the
		// transport drain it first. Publishers meanwhile fill the queue up
		// to maxQueue and are then told the server is busy.
		time.AfterFunc(outboundWait, r.next)
		return
	}
	r.qmu.Lock()
	r.takeBatchLocked()
	if r.batchFrames == 0 { // the room was freed meanwhile: nothing to send
		r.running = false
		r.qmu.Unlock()
		return
	}
	r.qmu.Unlock()
	r.start = now
	shards := r.room.shards
	r.pending.Store(int32(len(shards)))
	for i := range shards {
		if h.pool.Schedule(&shards[i]) != nil {
			r.shardDone() // pool closed at shutdown: nobody to deliver to
		}
	}
}

// takeBatchLocked moves what is queued, up to MaxBatch bytes of whole
// frames, into the round's batch; the rest waits for the next round.
// Caller holds qmu.
func (r *rounds) takeBatchLocked() {
	r.appendSummariesLocked()
	r.taken++
	r.batchSeq, r.batchAt = r.taken, r.queuedAt
	count := len(r.queueIDs)
	if limit := r.room.hub.cfg.MaxBatch; limit > 0 && len(r.queueV2) > limit {
		var end int
		end, count = wsframe.SplitFrames(r.queueV2, limit)
		seedEnd := wsframe.FramesEnd(r.queue, count)
		r.batch = append(r.spare[:0], r.queue[:seedEnd]...)
		r.batchV2 = append(r.spareV2[:0], r.queueV2[:end]...)
		r.queue = r.queue[:copy(r.queue, r.queue[seedEnd:])]
		r.queueV2 = r.queueV2[:copy(r.queueV2, r.queueV2[end:])]
		r.queuedAt = time.Now() // the rest is as old as this round, at most
	} else {
		r.batch, r.queue = r.queue, r.spare[:0]
		r.batchV2, r.queueV2 = r.queueV2, r.spareV2[:0]
	}
	r.spare, r.spareV2 = nil, nil
	r.batchFrames = count
	if count > 0 {
		r.lastTaken = r.queueIDs[count-1]
	}
	r.queueIDs = r.queueIDs[:copy(r.queueIDs, r.queueIDs[count:])]
}

// attach adds a joined session to the round's members, after queueing
// its replay: everything up to the newest message taken into a batch is
// replayed, and the session's first live batch is the next one taken.
// Called by Room.join with namesMu held.
func (r *rounds) attach(s *Session) {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	if replay := r.history.replay(s, r.lastTaken); len(replay) > 0 {
		s.t.Send(replay)
	}
	s.firstRound = r.taken + 1
	sh := &r.room.shards[int(s.id)%len(r.room.shards)]
	sh.mu.Lock()
	s.member = int32(len(sh.members))
	sh.members = append(sh.members, s)
	sh.mu.Unlock()
}

// Run fans the current batch out to the shard's members. It is the shard's
// task in a round.
func (sh *shard) Run() {
	r := &sh.room.rounds
	m := sh.room.hub.metrics
	sh.mu.Lock()
	sh.snap = append(sh.snap[:0], sh.members...)
	sh.mu.Unlock()
	n, written := 0, 0
	for i, s := range sh.snap {
		sh.snap[i] = nil
		if s.firstRound > r.batchSeq {
			continue // joined after this batch was taken: it was in the replay
		}
		batch := r.batch
		if s.v2 {
			batch = r.batchV2
		}
		ok, w := s.t.Deliver(batch)
		if ok {
			n++
		}
		written += w
	}
	if n > 0 {
		m.Deliveries.Add(float64(n * r.batchFrames))
		m.BytesOut.Add(float64(written))
	}
	r.shardDone()
}

// shardDone ends the round when its last shard finishes, and starts the next
// one if messages arrived meanwhile.
func (r *rounds) shardDone() {
	if r.pending.Add(-1) != 0 {
		return
	}
	h := r.room.hub
	r.end = time.Now()
	r.took = r.end.Sub(r.start)
	h.metrics.BroadcastLatency.Observe(r.end.Sub(r.batchAt).Seconds())
	h.metrics.Rounds.Inc()
	h.rounds.Add(1)
	r.qmu.Lock()
	r.spare, r.spareV2 = r.batch[:0], r.batchV2[:0]
	r.batch, r.batchV2 = nil, nil
	if r.emptyLocked() {
		r.running = false
		r.qmu.Unlock()
		return
	}
	r.qmu.Unlock()
	r.next()
}
