package chat

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"gochat/server/internal/chatmsg"
	"gochat/server/internal/wsframe"
)

// rounds is a room's broadcast pipeline. enqueue encodes a message once in
// each wire form (the seed's two keys, and gochat.v2 with id, room and
// time), keeps it in the room's history, and appends it to the queue.
// Rounds deliver it: a round visits every member, a chunk of members per
// worker (fanout), and gives each, in one Transport.Deliver (one write(2))
// in its form, everything queued that it has not been given yet (up to
// MaxBatch bytes) — including what arrived since the round started, so a
// message that arrives during a round reaches the members not yet visited
// in it. Each member's messages are a contiguous run of the queue, which
// keeps every sender's messages in order at every receiver; under load,
// messages that arrive between a member's visits (a round and the short
// rest after it, see next) share one write, so the cost per message falls
// as the load rises.
type rounds struct {
	room *Room

	qmu       sync.Mutex  // Protects following.
	bufs      *roundBufs  // the queue and the round's scratch; allocated at the first message
	queuedAt  int64       // when the oldest of them was published (unix nanos)
	summaries *[2]summary // joins and leaves waiting for the next round (presence.go); large rooms only
	history   history     // the room's last messages (history.go)
	lastTaken uint64      // id of the newest message a round has started on
	lastID    uint64      // id of the newest message queued or loaded
	// Messages are numbered in the room from 0 (their sequence, not their
	// id): the queue holds base.., and a round owes every member what it
	// has not been given up to passEnd, the end when the round started.
	base    uint64
	passEnd uint64
	batchAt int64 // queuedAt when the round started; round timing

	// Round timing (unix nanos), touched only by whoever starts or ends the
	// round in flight (never two at once).
	start int64
	end   int64
	took  time.Duration

	// The small fields together: a Room fits the 256-byte size class.
	pending atomic.Int32 // fan-out tasks of the round not yet done
	behind  atomic.Int32 // members the round left with output pending
	running bool         // a round is in flight, or due on a timer (next); qmu
	freed   bool         // the room emptied and is gone: nothing more is queued; qmu
	lagging bool         // the last round left some member with output pending; round timing
	busy    bool         // messages arrive fast enough to share writes if paced (startLocked); round timing
}

// roundBufs are a room's broadcast buffers: a room that never carries a
// message (an idle one) never allocates them, and a room that stops
// carrying them gives them back (Hub.Trim).
type roundBufs struct {
	// The queue: messages base.. that some member has not been given, as
	// seed frames and as gochat.v2 frames, where each starts in both, and
	// their ids. Appended under qmu; a round's tasks read slices of it
	// under qmu and write them without it (appends never touch bytes
	// below len); only the end of a round, with no task running, drops
	// its given prefix.
	queue    []byte
	queueV2  []byte
	offs     []int32
	offsV2   []int32
	queueIDs []uint64
	scratch  entry // encodes messages when the room keeps no history; qmu
	// The round in flight: written only between rounds.
	snap    []*Session // the round's copy of the members
	tasks   []fanout   // the round's fan-out tasks; grows with the room
	passMin uint64     // the least sequence a visited member still needs; qmu
	// The room's message rate, counted as rounds start: messages
	// since rateFrom (unix nanos), and per second over the last window.
	rateFrom int64
	rateN    int
	rate     float64
}

// rateWindow is how long a room's message rate is counted over.
const rateWindow = 250 * time.Millisecond

// paceAt is how many messages a paced round must be expected to carry
// for pacing to pay: below it, waiting for RoundInterval would add
// latency and save no writes.
const paceAt = 2

// noteTaken counts n messages that a round started on at unix nanos now.
func (b *roundBufs) noteTaken(n int, now int64) {
	if b.rateFrom == 0 {
		b.rateFrom = now
	}
	b.rateN += n
	if d := now - b.rateFrom; d >= int64(rateWindow) {
		b.rate = float64(b.rateN) * float64(time.Second) / float64(d)
		b.rateFrom, b.rateN = now, 0
	}
}

// paceAbove is the round duration from which a room's rounds keep
// Config.RoundInterval between them: about a round over a thousand members.
const paceAbove = 2 * time.Millisecond

// maxRest caps the pause between rounds.
const maxRest = 25 * time.Millisecond

// maxQueue bounds the bytes waiting for a round; beyond it Publish refuses
// (the sender gets an Error; nothing accepted is ever dropped).
const maxQueue = 8 << 20

// outboundWait is how long a round waits for the transport's pending
// output to fall back under its bound before it looks again.
const outboundWait = 5 * time.Millisecond

func (r *rounds) init(room *Room) {
	r.room = room
	r.history.init(room.hub)
}

// trim drops the room's broadcast buffers if no round is in flight or due:
// nothing refers to them between rounds.
func (r *rounds) trim() {
	r.qmu.Lock()
	if !r.running && r.emptyLocked() {
		r.bufs = nil
	}
	r.qmu.Unlock()
}

func (r *rounds) idle() bool {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	return !r.running
}

// enqueue queues a message for the room's members, with id (0: the next
// local one) and ts (unix ms; 0: now). It reads name and content only
// during the call.
func (r *rounds) enqueue(id uint64, ts int64, name, content string) error {
	r.qmu.Lock()
	if r.freed {
		r.qmu.Unlock()
		return nil // nobody is left to deliver to
	}
	if r.bufs != nil && len(r.bufs.queueV2) > maxQueue {
		r.qmu.Unlock()
		r.room.hub.metrics.BusyRejects.Inc()
		return chatmsg.ErrServerBusy
	}
	// Joins and leaves summarized so far happened before this message:
	// they go out first, as they would have one by one.
	r.appendSummariesLocked()
	r.enqueueLocked(id, ts, name, content)
	r.kickLocked()
	return nil
}

// enqueueLocked encodes the message into its history entry and appends
// it to the queues in both forms (the gochat.v2 frame made from the
// seed's). id 0 takes the next local id: the
// process's on one node; in a cluster, one after the room's newest, which
// stays below the cluster's next (idsPerSeq). ts 0 is now. Caller holds
// qmu.
func (r *rounds) enqueueLocked(id uint64, ts int64, name, content string) {
	h := r.room.hub
	if r.bufs == nil {
		r.bufs = new(roundBufs)
	}
	now := time.Now()
	switch {
	case id != 0:
	case h.relay == nil:
		id = h.ids.next()
	default:
		id = r.lastID + 1
	}
	r.lastID = max(r.lastID, id)
	if ts == 0 {
		ts = now.UnixMilli()
	}
	if r.emptyLocked() {
		r.queuedAt = now.UnixNano()
	}
	e := r.encodeLocked(id, now.UnixNano(), ts, name, content)
	b := r.bufs
	b.offs = append(b.offs, int32(len(b.queue)))
	b.offsV2 = append(b.offsV2, int32(len(b.queueV2)))
	b.queue = append(b.queue, e.seed...)
	b.queueV2 = e.appendV2(b.queueV2, r.room.name)
	b.queueIDs = append(b.queueIDs, id)
	h.metrics.Published.Inc()
}

// encodeLocked keeps message id, at unix nanos at, in the history (or in
// a scratch entry if the room keeps none) and returns its entry. Caller
// holds qmu.
func (r *rounds) encodeLocked(id uint64, at, ts int64, name, content string) *entry {
	e := r.history.push(id, at)
	if e == nil {
		if r.bufs == nil {
			r.bufs = new(roundBufs)
		}
		e = &r.bufs.scratch
		e.id = id
	}
	e.ts = ts
	e.seed = wsframe.AppendFramed(e.seed[:0], ws.OpText, func(b []byte) []byte {
		return chatmsg.AppendChat(b, name, content)
	})
	return e
}

// IDsPerSeq is how many message ids the cluster leaves between two of its
// own (a room's stream sequence times IDsPerSeq): the room's messages a
// node delivers while the cluster is out of reach take the ids in
// between, so ids still increase in every room.
const IDsPerSeq = 1_000_000

// load keeps a message the cluster ordered before this node watched the
// room: history only, nobody receives it live. Messages come oldest first.
func (r *rounds) load(id uint64, ts int64, m *Message) {
	name, content := r.room.words(m)
	r.qmu.Lock()
	defer r.qmu.Unlock()
	if r.freed || id <= r.lastID {
		return
	}
	if r.history.n == 0 {
		r.history.floor = max(r.history.floor, id-1)
	}
	r.encodeLocked(id, ts*int64(time.Millisecond), ts, name, content)
	r.lastID, r.lastTaken = id, id
}

// forget records that the cluster no longer keeps the room's messages up
// to id: a client resuming from before it is told of the gap.
func (r *rounds) forget(id uint64) {
	r.qmu.Lock()
	r.history.floor = max(r.history.floor, id)
	r.qmu.Unlock()
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
	return (r.bufs == nil || len(r.bufs.queueIDs) == 0) && (r.summaries == nil || r.summaries[joined].n == 0 && r.summaries[left].n == 0)
}

// next starts a round with what is queued, once the fan-out has rested
// half as long as its last round took (at most maxRest), and, in a room
// whose rounds are expensive and whose messages come fast enough for a
// paced round to carry paceAt of them, at least RoundInterval has passed
// since that round started. The more members, the
// longer a round, the more messages the next one carries: the cost per
// delivery falls as load rises, since one write(2) per member per round is
// the dominant cost. The cap keeps bigger batches (longer rounds) from
// feeding back into ever longer rests. An idle room starts a round at once,
// so this adds no latency at rest. Called with running set and no round in
// flight.
func (r *rounds) next() {
	h := r.room.hub
	now := time.Now().UnixNano()
	rest := min(r.took/2, r.room.hub.maxRest)
	// A room whose rounds are expensive (many members) and busy, or whose
	// last round left members with output the kernel did not take, keeps
	// RoundInterval between round starts: the messages of that time share
	// one write per member, and readers that fell behind get time to catch
	// up rather than a pile-up that evicts them. A cheap round that
	// everyone took costs little to repeat, so a small room is never held
	// back; nor is a large room whose messages come one at a time, where
	// waiting would add latency and save no write.
	var cycle time.Duration
	if r.took >= paceAbove && r.busy || r.lagging {
		cycle = h.cfg.RoundInterval
	}
	wait := max(cycle-time.Duration(now-r.start), rest-time.Duration(now-r.end))
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
	if !r.startLocked(now) { // the room was freed meanwhile: nothing to send
		r.running = false
		r.qmu.Unlock()
		return
	}
	r.qmu.Unlock()
	r.start = now
	room := r.room
	room.membersMu.Lock()
	r.bufs.snap = append(r.bufs.snap[:0], room.members...)
	room.membersMu.Unlock()
	// One task per fanoutChunk members, at most Shards: a small room is one
	// task, a large one spreads over the workers.
	n := max(1, min((len(r.bufs.snap)+fanoutChunk-1)/fanoutChunk, h.cfg.Shards))
	for len(r.bufs.tasks) < n {
		r.bufs.tasks = append(r.bufs.tasks, fanout{r: r})
	}
	r.pending.Store(int32(n))
	for i := range n {
		t := &r.bufs.tasks[i]
		t.from, t.to = i*len(r.bufs.snap)/n, (i+1)*len(r.bufs.snap)/n
		if h.pool.Schedule(t) != nil {
			r.shardDone() // pool closed at shutdown: nobody to deliver to
		}
	}
}

// fanoutChunk is the fewest members a round gives a task of its own.
const fanoutChunk = 256

// fanout is one task of a round: it visits snap[from:to]. from moves on
// as it goes (it may yield between chunks and run again); set by next
// between rounds.
type fanout struct {
	r        *rounds
	from, to int
}

// startLocked starts a round on what is queued: every member is owed
// the messages up to the end now (passEnd), and, when the task reaches
// it, whatever came since as well. It reports false if nothing is queued
// (the room was freed). Caller holds qmu.
func (r *rounds) startLocked(now int64) bool {
	r.appendSummariesLocked()
	b := r.bufs
	if b == nil || len(b.queueIDs) == 0 {
		return false
	}
	end := r.base + uint64(len(b.queueIDs))
	b.noteTaken(int(end-max(r.passEnd, r.base)), now)
	r.busy = b.rate*r.room.hub.cfg.RoundInterval.Seconds() >= paceAt
	r.passEnd, r.lastTaken, r.batchAt = end, b.queueIDs[len(b.queueIDs)-1], r.queuedAt
	b.passMin = math.MaxUint64
	return true
}

// segment is segmentLocked under qmu.
func (r *rounds) segment(s *Session, limit int) ([]byte, uint64) {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	return r.segmentLocked(s, limit)
}

// segmentLocked returns the frames s has not been given, in its form, up
// to the end of the queue now (at most limit bytes of whole frames, at
// least one frame; limit 0: no limit), and the sequence after them; nil
// if it has been given everything. Caller holds qmu.
func (r *rounds) segmentLocked(s *Session, limit int) ([]byte, uint64) {
	b := r.bufs
	n := len(b.queueIDs)
	if s.next >= r.base+uint64(n) {
		return nil, 0
	}
	q, offs := b.queue, b.offs
	if s.v2 {
		q, offs = b.queueV2, b.offsV2
	}
	// A member is never behind base: the end of a round keeps what any
	// member still needs. Were it ever, it gets what is left rather than
	// a slice out of range.
	from := int(max(s.next, r.base) - r.base)
	to := n
	if limit > 0 {
		frameEnd := func(i int) int { // where message i ends
			if i+1 < n {
				return int(offs[i+1])
			}
			return len(q)
		}
		for to = from + 1; to < n && frameEnd(to)-int(offs[from]) <= limit; to++ {
		}
	}
	end := len(q)
	if to < n {
		end = int(offs[to])
	}
	return q[offs[from]:end], r.base + uint64(to)
}

// dropGivenLocked drops the queued messages every member has been given
// at the end of a round: those up to passEnd that no visited member still
// needs (members that joined during the round start at passEnd). Caller
// holds qmu; no task is running.
func (r *rounds) dropGivenLocked() {
	b := r.bufs
	k := int(min(b.passMin, r.passEnd) - r.base)
	if k <= 0 {
		return
	}
	n := len(b.queueIDs)
	cut, cutV2 := len(b.queue), len(b.queueV2)
	if k < n {
		cut, cutV2 = int(b.offs[k]), int(b.offsV2[k])
	}
	b.queue = b.queue[:copy(b.queue, b.queue[cut:])]
	b.queueV2 = b.queueV2[:copy(b.queueV2, b.queueV2[cutV2:])]
	b.queueIDs = b.queueIDs[:copy(b.queueIDs, b.queueIDs[k:])]
	b.offs = b.offs[:copy(b.offs, b.offs[k:])]
	b.offsV2 = b.offsV2[:copy(b.offsV2, b.offsV2[k:])]
	for i := range b.offs {
		b.offs[i] -= int32(cut)
		b.offsV2[i] -= int32(cutV2)
	}
	r.base += uint64(k)
	if len(b.queueIDs) > 0 {
		r.queuedAt = r.end // what is left came during the round: it is as old as the round, at most
	}
}

// attach adds a joined session to the round's members, after queueing
// its replay: everything up to the newest message a round has started on
// is replayed, and the rounds give it everything after that.
// Called by Room.join with namesMu held.
func (r *rounds) attach(s *Session) {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	if replay := r.history.replay(s, r.lastTaken); len(replay) > 0 {
		s.t.Send(replay)
	}
	s.next = r.passEnd
	room := r.room
	room.membersMu.Lock()
	s.member = int32(len(room.members))
	room.members = append(room.members, s)
	room.membersMu.Unlock()
}

// Run gives each of the task's members, in turn, what it has not been
// given so far: everything queued when the task reaches it, so a message
// that arrives during the round still reaches the members not yet
// visited in this round, in one write with the rest. After every
// fanoutChunk members it yields to the tasks waiting for a worker: a
// round over thousands of members would otherwise hold every worker for
// its whole length, and the senders' messages would wait unread until it
// ended instead of joining it.
func (t *fanout) Run() {
	r := t.r
	for {
		end := min(t.to, t.from+fanoutChunk)
		t.visit(t.from, end)
		t.from = end
		if t.from == t.to {
			break
		}
		if r.room.hub.pool.Yield(t) {
			return // runs again, from t.from, when its turn comes
		}
	}
	r.shardDone()
}

// visit gives members snap[lo:hi] what they have not been given.
func (t *fanout) visit(lo, hi int) {
	r := t.r
	b := r.bufs // kept while a round runs (trim waits for it)
	h := r.room.hub
	limit := h.cfg.MaxBatch
	frames, written := 0, 0
	least := uint64(math.MaxUint64)
	for i := lo; i < hi; i++ {
		s := b.snap[i]
		b.snap[i] = nil // the session may go: the round keeps no hold on it
		seg, to := r.segment(s, limit)
		if seg == nil {
			least = min(least, s.next)
			continue
		}
		ok, w := s.t.Deliver(seg)
		given := int(to - s.next)
		s.next = to // also when closing: it stays a member until it leaves, and is owed nothing more
		least = min(least, to)
		if !ok {
			continue
		}
		frames += given
		if w < len(seg) {
			r.behind.Add(1)
		}
		written += w
	}
	if frames > 0 {
		h.metrics.Deliveries.Add(float64(frames))
		h.metrics.BytesOut.Add(float64(written))
	}
	r.qmu.Lock()
	b.passMin = min(b.passMin, least)
	r.qmu.Unlock()
}

// shardDone ends the round when its last task finishes, and starts the next
// one if messages arrived meanwhile.
func (r *rounds) shardDone() {
	if r.pending.Add(-1) != 0 {
		return
	}
	h := r.room.hub
	r.end = time.Now().UnixNano()
	r.took = time.Duration(r.end - r.start)
	r.lagging = r.behind.Swap(0) > 0
	h.metrics.BroadcastLatency.Observe(time.Duration(r.end - r.batchAt).Seconds())
	h.metrics.Rounds.Inc()
	h.rounds.Add(1)
	r.qmu.Lock()
	r.dropGivenLocked()
	if r.emptyLocked() {
		r.running = false
		r.qmu.Unlock()
		return
	}
	r.qmu.Unlock()
	r.next()
}
