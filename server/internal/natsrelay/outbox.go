package natsrelay

import (
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gochat/server/internal/chat"
	"gochat/server/internal/chatmsg"
)

// outbox holds what this node accepted until the stream has stored it.
// Publish appends; the publisher goroutine alone sends and pops, oldest
// first, so a sender's messages reach the stream in its order.
type outbox struct {
	mu       sync.Mutex // Protects following.
	recs     []outRec   // waiting, oldest first, from head
	head     int
	bytes    int
	seq      uint64 // the last message id issued (after the node id)
	degraded bool   // the cluster is out of reach: Publish delivers locally
	closed   bool   // Close has begun: Publish refuses
	// echo holds the ids of messages delivered here without the cluster
	// (unix nanos when): their copy from the stream is not delivered again.
	echo map[uint64]int64
	// counters number this node's records in each room it has members in
	// (the record's n); a room that empties here starts again at 1.
	counters map[string]uint64

	// deliverMu serializes local deliveries, so that messages a sweep
	// delivers (degrade) precede the ones published after it. Taken
	// after mu, which is released once deliverMu is held.
	deliverMu sync.Mutex

	wake chan struct{} // cap 1: records arrived, or the state changed
}

// outRec is one message waiting for the stream.
type outRec struct {
	room   string
	seq    uint64
	at     int64 // unix nanos accepted
	data   []byte
	local  bool // delivered here already (degraded)
	echoed bool // its copy from the stream was delivered here already
}

const (
	// maxOutbox bounds the bytes of records waiting for the stream; past
	// it, Publish refuses and the sender is told.
	maxOutbox = 8 << 20
	// maxInFlight bounds the publishes awaiting their acks at once.
	maxInFlight = 256
	// maxFlight bounds the bytes of those.
	maxFlight = 1 << 20
	// ackTimeout is how long the publisher waits for an ack before it
	// sends the batch again (the stream drops what it already has).
	ackTimeout = 5 * time.Second
)

func (o *outbox) init() {
	o.wake = make(chan struct{}, 1)
	o.echo = make(map[uint64]int64)
	o.counters = make(map[string]uint64)
	o.degraded = true // until the stream is known to be there
}

func (o *outbox) poke() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

func (o *outbox) pending() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.recs) - o.head
}

func (o *outbox) age() time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.head == len(o.recs) {
		return 0
	}
	return time.Duration(time.Now().UnixNano() - o.recs[o.head].at)
}

// Degraded reports whether the cluster is out of reach: this node
// delivers its members' messages itself, or cannot check names with the
// others yet.
func (c *Relay) Degraded() bool { return c.out.isDegraded() || !c.roster.isLive() }

func (o *outbox) isDegraded() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.degraded
}

// Publish queues m for the stream; while the cluster is out of reach it
// also delivers m to this node's members at once. It fails only when the
// outbox is full (or the relay closed): the sender is told, nothing is sent.
func (c *Relay) Publish(room string, m *chat.Message) error {
	o := &c.out
	size := 24 + len(m.Name) + len(m.Name2) + len(m.Content)
	o.mu.Lock()
	if o.closed || o.bytes+size > maxOutbox {
		o.mu.Unlock()
		c.metrics.rejected.Inc()
		return chatmsg.ErrServerBusy
	}
	o.counters[room]++
	data := appendRecord(make([]byte, 0, size), m, o.counters[room])
	o.seq++
	now := time.Now().UnixNano()
	rec := outRec{room: room, seq: o.seq, at: now, data: data, local: o.degraded}
	if rec.local {
		o.echo[rec.seq] = now
	}
	o.recs = append(o.recs, rec)
	o.bytes += len(data)
	o.poke()
	if !rec.local {
		o.mu.Unlock()
		return nil
	}
	o.deliverMu.Lock()
	o.mu.Unlock()
	c.deliverLocal(room, m)
	o.deliverMu.Unlock()
	return nil
}

// deliverLocal gives this node's members a message the cluster has not
// ordered: it gets an id after the room's newest. Caller holds deliverMu.
func (c *Relay) deliverLocal(room string, m *chat.Message) {
	c.metrics.localDeliveries.Inc()
	if c.hub.Deliver(room, 0, time.Now().UnixMilli(), m) != nil {
		c.metrics.dropped.WithLabelValues(dropBusy).Inc()
	}
}

// degrade makes this node deliver its members' messages itself, starting
// with those waiting in the outbox that the stream has not handed back.
func (c *Relay) degrade() {
	o := &c.out
	o.mu.Lock()
	if o.degraded {
		o.mu.Unlock()
		return
	}
	o.degraded = true
	now := time.Now().UnixNano()
	var sweep []outRec
	for i := o.head; i < len(o.recs); i++ {
		r := &o.recs[i]
		if !r.local && !r.echoed {
			r.local = true
			o.echo[r.seq] = now
			sweep = append(sweep, *r)
		}
	}
	o.deliverMu.Lock()
	o.mu.Unlock()
	c.log.Warn("cluster out of reach: this node delivers its members' messages itself and sends them when NATS is back", "waiting", len(sweep))
	for _, r := range sweep {
		var m chat.Message
		if _, err := parseRecord(r.data, &m, math.MaxInt); err == nil {
			c.deliverLocal(r.room, &m)
		}
	}
	o.deliverMu.Unlock()
}

// recover ends local delivery: the stream takes messages again.
func (c *Relay) recover() {
	o := &c.out
	o.mu.Lock()
	was := o.degraded
	o.degraded = false
	o.mu.Unlock()
	if was {
		c.log.Info("cluster reachable: messages go through the stream again")
	}
}

// echoed is called by the receiver for each of this node's own messages
// the stream hands back. It reports whether the message was delivered here
// already (without the cluster); otherwise it notes that it now is, so
// that a later degrade does not deliver it again.
func (o *outbox) echoed(seq uint64) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.echo[seq]; ok {
		delete(o.echo, seq)
		return true
	}
	// Records are in seq order: find it, if it still waits for its ack.
	lo, hi := o.head, len(o.recs)
	for lo < hi {
		mid := (lo + hi) / 2
		if o.recs[mid].seq < seq {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo < len(o.recs) && o.recs[lo].seq == seq {
		o.recs[lo].echoed = true
	}
	return false
}

// peek copies up to maxInFlight waiting records (maxFlight bytes).
func (o *outbox) peek(dst []outRec) []outRec {
	o.mu.Lock()
	defer o.mu.Unlock()
	size := 0
	for i := o.head; i < len(o.recs) && len(dst) < maxInFlight; i++ {
		if len(dst) > 0 && size+len(o.recs[i].data) > maxFlight {
			break
		}
		size += len(o.recs[i].data)
		dst = append(dst, o.recs[i])
	}
	return dst
}

// pop drops the n oldest records: the stream has them.
func (o *outbox) pop(n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i := o.head; i < o.head+n; i++ {
		o.bytes -= len(o.recs[i].data)
		o.recs[i] = outRec{}
	}
	o.head += n
	if o.head == len(o.recs) {
		o.recs, o.head = o.recs[:0], 0
	} else if o.head > 4096 && o.head > len(o.recs)/2 {
		o.recs = o.recs[:copy(o.recs, o.recs[o.head:])]
		o.head = 0
	}
}

// pruneEcho forgets local deliveries whose copy never came back (the room
// emptied here meanwhile): older than the stream's duplicate window.
func (o *outbox) pruneEcho() {
	o.mu.Lock()
	defer o.mu.Unlock()
	old := time.Now().Add(-2 * dedupWindow).UnixNano()
	for seq, at := range o.echo {
		if at < old {
			delete(o.echo, seq)
		}
	}
}

// publish is the publisher goroutine: it sends the outbox to the stream,
// a window of records at a time, and pops what the stream acknowledged.
// On Close it sends what is left for up to drainTimeout.
func (c *Relay) publish() {
	defer close(c.pubDone)
	o := &c.out
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	quit := c.quit
	var drainBy time.Time
	var batch []outRec
	lastPrune := time.Now()
	failing := false
	for {
		select {
		case <-o.wake:
		case <-tick.C:
		case <-quit:
			quit = nil
			drainBy = time.Now().Add(drainTimeout)
			o.mu.Lock()
			o.closed = true
			o.mu.Unlock()
		}
		if time.Since(lastPrune) > time.Minute {
			o.pruneEcho()
			lastPrune = time.Now()
		}
		for {
			if quit == nil && (o.pending() == 0 || time.Now().After(drainBy)) {
				if n := o.pending(); n > 0 {
					c.metrics.unsent.Add(float64(n))
					c.log.Warn("messages not sent to the cluster before shutdown", "count", n)
				}
				return
			}
			if !c.nc.IsConnected() {
				c.degrade()
				break
			}
			if c.streamH.Load() == nil {
				if err := c.ensureStream(); err != nil {
					if !failing {
						c.log.Warn("cluster stream not available; retrying", "err", err)
					}
					failing = true
					c.degrade()
					break
				}
				c.recover()
			}
			batch = o.peek(batch[:0])
			if len(batch) == 0 {
				break
			}
			acked, ok := c.send(batch)
			o.pop(acked)
			if !ok {
				if !failing {
					c.log.Warn("publishing to the cluster failing; retrying")
				}
				failing = true
				c.degrade()
				break
			}
			if failing {
				c.log.Info("publishing to the cluster recovered")
			}
			failing = false
			c.recover()
		}
	}
}

// send publishes batch and waits for the acks in order. It returns how
// many of the oldest were stored, and whether all were.
func (c *Relay) send(batch []outRec) (int, bool) {
	futures := make([]jetstream.PubAckFuture, 0, len(batch))
	for i := range batch {
		r := &batch[i]
		msg := &nats.Msg{
			Subject: c.inPfx + roomToken(r.room),
			Data:    r.data,
			Header:  nats.Header{nats.MsgIdHdr: []string{c.node + "." + strconv.FormatUint(r.seq, 10)}},
		}
		f, err := c.js.PublishMsgAsync(msg)
		if err != nil {
			break
		}
		futures = append(futures, f)
	}
	stall := time.NewTimer(stallAfter)
	defer stall.Stop()
	giveUp := time.NewTimer(ackTimeout)
	defer giveUp.Stop()
	acked := 0
wait:
	for _, f := range futures {
		for {
			select {
			case <-f.Ok():
				acked++
				continue wait
			case <-f.Err():
				break wait
			case <-stall.C:
				c.degrade() // keep waiting: the acks may still come
			case <-giveUp.C:
				break wait
			}
		}
	}
	c.metrics.published.Add(float64(acked))
	return acked, acked == len(batch)
}
