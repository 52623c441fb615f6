package natsrelay

import (
	"context"
	"errors"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gochat/server/internal/chat"
)

// receiver is the receiving side: the live subscriptions of the rooms that
// have members here, all feeding one channel read by one goroutine, which
// also runs the watch/unwatch/catch-up tasks, so a room's state is touched
// by that goroutine only.
type receiver struct {
	live  chan *nats.Msg      // every room's live subscription
	rooms map[string]*roomSub // receive goroutine only

	mu    sync.Mutex // Protects tasks.
	tasks []func()
	wake  chan struct{} // cap 1: tasks were posted

	// Ingress bound on other nodes' records (receive goroutine only).
	tokens float64
	filled time.Time
}

// roomSub is one watched room on the receive goroutine.
type roomSub struct {
	name    string
	subject string // where the stream keeps the room
	sub     *nats.Subscription
	last    uint64            // the room's newest stream sequence delivered or loaded here
	origins map[string]uint64 // each node's last record number (n) seen in the room
	dropped uint64            // messages the subscription dropped, counted so far
	known   bool              // last is the room's state in the stream (else: caught up from created)
	created time.Time         // when its first session here arrived
}

const (
	// liveBuffer is the messages the live subscriptions may hold for the
	// receiver; past it NATS drops them and the receiver takes them from
	// the stream instead.
	liveBuffer = 8 << 10
	// maxIngress bounds the records per second this node takes from other
	// nodes, with as large a burst: a flood on the bus is dropped and
	// counted rather than fanned out to every member here.
	maxIngress = 20_000
	// maxOrigins bounds the nodes a room remembers record numbers of.
	maxOrigins = 1024
	// fetchBatch is the messages asked of the stream at a time.
	fetchBatch = 256
)

func (in *receiver) init() {
	in.live = make(chan *nats.Msg, liveBuffer)
	in.rooms = make(map[string]*roomSub)
	in.wake = make(chan struct{}, 1)
	in.tokens = maxIngress
}

// post runs f on the receive goroutine. It never blocks.
func (in *receiver) post(f func()) {
	in.mu.Lock()
	in.tasks = append(in.tasks, f)
	in.mu.Unlock()
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

// allow takes one token of the ingress bound for a record the stream
// stored at at. The bucket fills by the stream's clock, not this node's:
// what counts is how fast records arrived, not how fast this node gets to
// them, so a flood is cut the same on a busy node as on an idle one.
func (in *receiver) allow(at time.Time) bool {
	if d := at.Sub(in.filled); d > 0 {
		in.tokens = min(maxIngress, in.tokens+d.Seconds()*maxIngress)
		in.filled = at
	}
	if in.tokens < 1 {
		return false
	}
	in.tokens--
	return true
}

// Watch subscribes to the room and loads its history (chat.Relay). While
// the cluster is out of reach nobody waits for that: the room opens empty
// and is caught up when NATS is back, so no worker waits on a hung NATS.
func (c *Relay) Watch(name string) <-chan struct{} {
	done := make(chan struct{})
	c.in.post(func() {
		c.watch(name)
		close(done)
	})
	if c.out.isDegraded() {
		return nil
	}
	return done
}

// Unwatch drops the room's subscription (chat.Relay).
func (c *Relay) Unwatch(name string) {
	c.out.mu.Lock()
	delete(c.out.counters, name)
	c.out.mu.Unlock()
	c.in.post(func() { c.unwatch(name) })
}

// receive is the receive goroutine.
func (c *Relay) receive() {
	defer close(c.rcvDone)
	in := &c.in
	for {
		select {
		case <-c.quit:
			for _, rs := range in.rooms {
				if rs.sub != nil {
					_ = rs.sub.Unsubscribe()
				}
			}
			return
		case m := <-in.live:
			c.onLive(m)
		case <-in.wake:
			in.mu.Lock()
			tasks := in.tasks
			in.tasks = nil
			in.mu.Unlock()
			for _, f := range tasks {
				f()
			}
		}
	}
}

func (c *Relay) watch(name string) {
	in := &c.in
	if in.rooms[name] != nil {
		return
	}
	tok := roomToken(name)
	rs := &roomSub{name: name, subject: c.inPfx + tok, created: time.Now()}
	sub, err := c.nc.ChanSubscribe(c.livePfx+tok, in.live)
	if err != nil {
		c.log.Warn("cannot subscribe to a room", "err", err)
	} else {
		_ = sub.SetPendingLimits(-1, -1) // the channel's capacity is the bound
		rs.sub = sub
	}
	in.rooms[name] = rs
	c.load(rs)
}

func (c *Relay) unwatch(name string) {
	in := &c.in
	if rs := in.rooms[name]; rs != nil {
		c.countDropped(rs)
		if rs.sub != nil {
			_ = rs.sub.Unsubscribe()
		}
		delete(in.rooms, name)
	}
}

// load takes the room's state from the stream: its newest sequence, and
// its recent messages into the room's history. If the stream cannot be
// reached, the room is caught up from its creation once it can.
func (c *Relay) load(rs *roomSub) {
	st := c.streamH.Load()
	if st == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	raw, err := (*st).GetLastMsgForSubject(ctx, rs.subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		rs.known = true // the room has no messages kept
		return
	}
	if err != nil {
		c.log.Warn("cannot load a room's state from the stream", "err", err)
		return
	}
	last := raw.Sequence
	loaded := 0
	if c.cfg.History > 0 {
		cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{rs.subject}}
		if c.cfg.HistoryAge > 0 {
			from := time.Now().Add(-c.cfg.HistoryAge)
			cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &from
		}
		err = c.replay(ctx, st, cfg, last, func(seq uint64, at time.Time, msgID string, data []byte) {
			var m chat.Message
			n, err := parseRecord(data, &m, c.cfg.MaxContent)
			if err != nil {
				c.metrics.dropped.WithLabelValues(dropInvalid).Inc()
				return
			}
			rs.count(msgID, n, nil)
			c.hub.Load(rs.name, seq*chat.IDsPerSeq, at.UnixMilli(), &m)
			loaded++
		})
		if err != nil {
			c.log.Warn("cannot load a room's history from the stream", "err", err)
		}
	}
	if loaded == 0 {
		c.hub.Forget(rs.name, last*chat.IDsPerSeq)
	}
	rs.last, rs.known = max(rs.last, last), true
}

// catchUpSubject counts what the room's subscription (live subject subj)
// dropped, and catches the room up from the stream.
func (c *Relay) catchUpSubject(subj string) {
	if rs := c.in.rooms[tokenRoom(strings.TrimPrefix(subj, c.livePfx))]; rs != nil {
		c.countDropped(rs)
		c.catchUp(rs, 0)
	}
}

// countDropped adds what the room's subscription dropped since last time
// to the overflow counter.
func (c *Relay) countDropped(rs *roomSub) {
	if rs.sub == nil {
		return
	}
	if d, err := rs.sub.Dropped(); err == nil && uint64(d) > rs.dropped {
		c.metrics.overflow.Add(float64(uint64(d) - rs.dropped))
		rs.dropped = uint64(d)
	}
}

// count notes record n of the node whose message id is msgID, and adds
// to gaps the node's records in the room that never arrived. Records of
// publishers that are not gochat nodes carry no usable id, and are not
// counted.
func (rs *roomSub) count(msgID string, n uint64, gaps interface{ Add(float64) }) {
	node, _, ok := strings.Cut(msgID, ".")
	if !ok || len(node) != 16 {
		return
	}
	if rs.origins == nil || len(rs.origins) > maxOrigins {
		rs.origins = make(map[string]uint64) // bounded: junk ids cannot grow it
	}
	last := rs.origins[node]
	if gaps != nil && last != 0 && n > last+1 {
		gaps.Add(float64(n - last - 1))
	}
	rs.origins[node] = n // a smaller n: the node's room started again
}

// catchUpAll delivers what every room missed while NATS was away.
func (c *Relay) catchUpAll() {
	for _, rs := range c.in.rooms {
		c.catchUp(rs, 0)
	}
}

// catchUp delivers the room's messages after the last one delivered here
// (or, if the room was never loaded, since it was created here), up to
// upTo (0: all). It returns whether it asked the stream to the end.
func (c *Relay) catchUp(rs *roomSub, upTo uint64) bool {
	st := c.streamH.Load()
	if st == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*apiTimeout)
	defer cancel()
	n := 0
	defer func() { c.metrics.recovered.Add(float64(n)) }()
	if !rs.known {
		// Never loaded (NATS was away when the room opened here): what
		// the room got since then, through a consumer starting at that time.
		from := rs.created
		cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{rs.subject},
			DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &from}
		err := c.replay(ctx, st, cfg, upTo, func(seq uint64, at time.Time, msgID string, data []byte) {
			if seq > rs.last {
				c.deliver(rs, seq, at, msgID, data)
				n++
			}
		})
		if err != nil {
			c.log.Warn("cannot catch a room up from the stream", "err", err)
			return false
		}
		rs.known = true
		return true
	}
	// The room's next messages one at a time (a direct get each): a gap is
	// usually a few messages, or none the stream still has.
	for upTo == 0 || rs.last < upTo {
		m, err := (*st).GetMsg(ctx, rs.last+1, jetstream.WithGetMsgSubject(rs.subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return true // nothing newer
		}
		if err != nil {
			c.log.Warn("cannot catch a room up from the stream", "err", err)
			return false
		}
		if upTo > 0 && m.Sequence > upTo {
			return true
		}
		c.deliver(rs, m.Sequence, m.Time, m.Header.Get(nats.MsgIdHdr), m.Data)
		n++
	}
	return true
}

// replay reads the stream's messages that cfg selects, oldest first, up to
// sequence upTo (0: to the end), through a short-lived ordered consumer.
func (c *Relay) replay(ctx context.Context, st *jetstream.Stream, cfg jetstream.OrderedConsumerConfig, upTo uint64,
	fn func(seq uint64, at time.Time, msgID string, data []byte)) error {
	cfg.InactiveThreshold = 10 * time.Second
	cons, err := (*st).OrderedConsumer(ctx, cfg)
	if err != nil {
		return err
	}
	for {
		batch, err := cons.FetchNoWait(fetchBatch)
		if err != nil {
			return err
		}
		n, pending := 0, uint64(0)
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			n++
			seq := md.Sequence.Stream
			pending = md.NumPending
			if upTo > 0 && seq > upTo {
				pending = 0
				continue
			}
			fn(seq, md.Timestamp, m.Headers().Get(nats.MsgIdHdr), m.Data())
			if seq == upTo {
				pending = 0
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return err
		}
		if n == 0 || pending == 0 {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// onLive handles one message the stream republished to a room's live
// subject: in order, once, and with any gap before it filled from the
// stream.
func (c *Relay) onLive(m *nats.Msg) {
	rs := c.in.rooms[tokenRoom(strings.TrimPrefix(m.Subject, c.livePfx))]
	if rs == nil {
		return // the room emptied here meanwhile
	}
	seq, err1 := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	prev, err2 := strconv.ParseUint(m.Header.Get(jetstream.LastSequenceHeader), 10, 64)
	at, err3 := time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer))
	if err1 != nil || err2 != nil || err3 != nil || seq == 0 {
		c.metrics.dropped.WithLabelValues(dropInvalid).Inc()
		return // not from the stream
	}
	if !rs.known && !c.catchUp(rs, seq-1) {
		return // NATS failed meanwhile: the reconnection catches the room up
	}
	if seq <= rs.last {
		return // delivered already (a catch-up got it first)
	}
	if prev > rs.last {
		if !c.catchUp(rs, seq-1) {
			// The stream cannot be asked now (NATS just came back, the
			// stream is being checked): this message waits in the stream
			// too, and the catch-up that follows delivers it in order.
			return
		}
		if prev > rs.last {
			// The stream no longer has the room's message prev (nor perhaps
			// some before it). Those of gochat nodes are counted exactly
			// by their record numbers (count); anything else, here.
			c.metrics.gapsUnknown.Inc()
		}
	}
	c.deliver(rs, seq, at, m.Header.Get(nats.MsgIdHdr), m.Data)
}

// deliver hands the room's members here one message the stream ordered
// (stored at at). Other nodes' records pass the ingress bound first, before
// any work is spent on them.
func (c *Relay) deliver(rs *roomSub, seq uint64, at time.Time, msgID string, data []byte) {
	rs.last = seq
	if node, n, ok := strings.Cut(msgID, "."); ok && node == c.node {
		if s, err := strconv.ParseUint(n, 10, 64); err == nil && c.out.echoed(s) {
			// Delivered here while the cluster was out of reach.
			var m chat.Message
			if n, err := parseRecord(data, &m, math.MaxInt); err == nil {
				rs.count(msgID, n, c.metrics.gaps)
			}
			return
		}
	} else if !c.in.allow(at) {
		c.metrics.dropped.WithLabelValues(dropFlood).Inc()
		return
	}
	var m chat.Message
	n, err := parseRecord(data, &m, c.cfg.MaxContent)
	if err != nil {
		c.metrics.dropped.WithLabelValues(dropInvalid).Inc()
		return
	}
	rs.count(msgID, n, c.metrics.gaps)
	if c.hub.Deliver(rs.name, seq*chat.IDsPerSeq, at.UnixMilli(), &m) != nil {
		c.metrics.dropped.WithLabelValues(dropBusy).Inc()
		return
	}
	c.metrics.received.Inc()
}
