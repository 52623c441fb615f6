package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The rooms scenario (SPEC §8, issue #12) spreads the clients over many
// rooms, ws://HOST/ws?room=NAME, with one sender per small room and,
// optionally, one big room with its own senders beside them. Every client
// checks that it receives exactly the messages of its own room:
//
//   - a message identifies its room by its sender: the bench content
//     carries the sender's client id (message.go), and the room of every
//     client id is fixed by the plan below, so a receiver tells its own
//     room's messages from another room's without any lookup by name;
//   - lost: a message sent in its room that it never received;
//   - leaked: a message, barrier or join/leave notice of another room's
//     client (must be 0);
//   - duplicates: a (sender, sequence) received twice.
//
// Room names start with the run id, so two runs against one server never
// share a room, and nothing of an earlier run is in their history.

// roomsConfig holds the flags of the rooms layout.
type roomsConfig struct {
	Small      int     // -rooms: rooms sharing the clients not in the big room
	Big        int     // -big: members of one extra big room (0: none)
	BigSenders int     // -big-senders
	BigRate    float64 // -big-rate: messages/s in total in the big room
}

func roomsFlags(fs *flag.FlagSet, c *Config) {
	fs.IntVar(&c.Rooms.Small, "rooms", 100, "small rooms: the -conns clients not in the -big room are spread evenly over them; the first client of each one sends")
	fs.Float64Var(&c.Rate, "rate", 100, "messages per second in total over the small rooms, -rate/-rooms per room's sender (the server's default limit is 10/s per client)")
	fs.IntVar(&c.Rooms.Big, "big", 0, "clients in one extra big room beside the small rooms, counted in -conns (0: no big room)")
	fs.IntVar(&c.Rooms.BigSenders, "big-senders", 1, "senders among the -big room's clients")
	fs.Float64Var(&c.Rooms.BigRate, "big-rate", 10, "messages per second in total in the big room, spread over its -big-senders")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "how long the senders send")
	fs.IntVar(&c.Size, "size", 100, fmt.Sprintf("content bytes per message (min %d)", minContent))
	fs.DurationVar(&c.Drain, "drain", 5*time.Second, "after sending, wait at most this long for deliveries in flight")
}

// checkRooms validates the rooms scenario's flags.
func checkRooms(cfg *Config) error {
	rc := cfg.Rooms
	small := cfg.Conns - rc.Big
	switch {
	case rc.Small <= 0:
		return errors.New("-rooms must be > 0")
	case cfg.Rate <= 0:
		return errors.New("-rate must be > 0")
	case rc.Big < 0:
		return errors.New("-big must be >= 0")
	case small < rc.Small:
		return fmt.Errorf("-conns (%d) minus -big (%d) leaves %d clients for %d rooms: every room needs one", cfg.Conns, rc.Big, small, rc.Small)
	case rc.Big > 0 && (rc.BigSenders <= 0 || rc.BigSenders > rc.Big):
		return fmt.Errorf("-big-senders must be between 1 and -big (%d)", rc.Big)
	case rc.Big > 0 && rc.BigRate <= 0:
		return errors.New("-big-rate must be > 0")
	case cfg.Size < minContent:
		return fmt.Errorf("-size must be at least %d bytes (the latency header)", minContent)
	}
	return nil
}

// roomsRun is the room plan of a fleet and what its clients saw. The
// plan is fixed before any client dials; each roomClient is then written
// only by its client's reader goroutine and read after the readers exit
// (distinct, which the drain loop watches, is atomic).
type roomsRun struct {
	f       *fleet
	names   []string
	urls    []string
	members [][]int32 // client ids per room, senders first
	senders []int     // per room: members[k][:senders[k]] send
	rate    []float64 // per room: messages/s per sender
	maxSeq  []int     // per room: sequences a sender can send in -duration
	big     int       // room index of the big room, -1 = none
	roomOf  []int32   // per client id
	slot    []int32   // per client id: index among its room's senders, -1
	st      []roomClient
}

// roomClient is what one client received, by kind.
type roomClient struct {
	seen        []uint64 // bitset: slot*maxSeq + seq-1 of its own room
	distinct    atomic.Uint64
	dups        uint64 // own-room messages received again
	unexpected  uint64 // own-room measured frames no sender sent (bad sequence)
	leaked      uint64 // measured messages of another room
	leakedOther uint64 // barriers and join/leave notices of another room
}

// newRoomsRun lays f's clients out over cfg.Rooms.Small rooms of even size
// (plus the big room): ids 0.. are the senders (one per small room, then
// the big room's), then each room's other members in turn.
func newRoomsRun(f *fleet) *roomsRun {
	rc := f.cfg.Rooms
	nrooms := rc.Small
	r := &roomsRun{f: f, big: -1}
	if rc.Big > 0 {
		r.big = nrooms
		nrooms++
	}
	sizes := make([]int, nrooms)
	small := f.n - max(rc.Big, 0)
	for k := range rc.Small {
		sizes[k] = small / rc.Small
		if k < small%rc.Small {
			sizes[k]++
		}
	}
	r.names = make([]string, nrooms)
	r.urls = make([]string, nrooms)
	r.members = make([][]int32, nrooms)
	r.senders = make([]int, nrooms)
	r.rate = make([]float64, nrooms)
	r.maxSeq = make([]int, nrooms)
	for k := range nrooms {
		r.names[k] = f.runID + "-r" + strconv.Itoa(k)
		r.senders[k] = min(sizes[k], 1)
		if rc.Small > 0 {
			r.rate[k] = f.cfg.Rate / float64(rc.Small)
		}
		if k == r.big {
			sizes[k] = rc.Big
			r.names[k] = f.runID + "-big"
			r.senders[k] = min(max(rc.BigSenders, 1), rc.Big)
			r.rate[k] = rc.BigRate / float64(r.senders[k])
		}
		r.urls[k] = roomURL(f.cfg.URL, r.names[k])
		r.members[k] = make([]int32, 0, sizes[k])
		if r.rate[k] > 0 {
			r.maxSeq[k] = int(math.Ceil(f.cfg.Duration.Seconds()*r.rate[k])) + 1
		}
	}
	r.roomOf = make([]int32, f.n)
	r.slot = make([]int32, f.n)
	id := 0
	place := func(k, count int, sending bool) {
		for range count {
			r.roomOf[id], r.slot[id] = int32(k), -1
			if sending {
				r.slot[id] = int32(len(r.members[k]))
			}
			r.members[k] = append(r.members[k], int32(id))
			id++
		}
	}
	for k := range nrooms {
		place(k, r.senders[k], true)
	}
	for k := range nrooms {
		place(k, sizes[k]-r.senders[k], false)
	}
	r.st = make([]roomClient, f.n)
	for i := range r.st {
		k := r.roomOf[i]
		r.st[i].seen = make([]uint64, (r.senders[k]*r.maxSeq[k]+63)/64)
	}
	return r
}

// roomURL is wsURL with ?room=name (other query parameters kept).
func roomURL(wsURL, name string) string {
	u, err := url.Parse(wsURL)
	if err != nil {
		return wsURL // prepare() already refused it
	}
	q := u.Query()
	q.Set("room", name)
	u.RawQuery = q.Encode()
	return u.String()
}

// dialURL is the URL client c dials: its room's when the fleet has rooms.
func (f *fleet) dialURL(c *client) string {
	if f.rooms == nil {
		if t := f.cfg.targets(); len(t) > 1 {
			return t[c.node].URL
		}
		return f.cfg.URL
	}
	return f.rooms.urls[f.rooms.roomOf[c.id]]
}

// handle accounts for a bench frame of this run received by c.
func (r *roomsRun) handle(c *client, bc benchContent) {
	st := &r.st[c.id]
	own := r.roomOf[c.id]
	if bc.sender >= len(r.roomOf) || r.roomOf[bc.sender] != own {
		if bc.kind == kindMeasured {
			st.leaked++
		} else {
			st.leakedOther++
		}
		return
	}
	switch bc.kind {
	case kindBarrier:
		c.sawBarrier(bc.seq)
	case kindMeasured:
		c.recordLatency(c.delivered(), bc.ts)
		slot, ms := int(r.slot[bc.sender]), r.maxSeq[own]
		if slot < 0 || bc.seq < 1 || bc.seq > ms {
			st.unexpected++
			return
		}
		if markSeen(st.seen, slot*ms+bc.seq-1) {
			st.dups++
			return
		}
		st.distinct.Add(1)
	}
}

var (
	listComma = []byte(", ")
	listAnd   = []byte(" and ")
)

// notice checks a System notice received by c: a join or leave notice
// naming a client of this run in another room is a leak. It reads the
// single-name form and the server's summaries ("a, b and 12 others
// joined the chat") without allocating.
func (r *roomsRun) notice(c *client, content []byte) {
	names, ok := bytes.CutSuffix(content, joinedTail)
	if !ok {
		if names, ok = bytes.CutSuffix(content, leftTail); !ok {
			return
		}
	}
	own := r.roomOf[c.id]
	for len(names) > 0 {
		name := names
		i, j := bytes.Index(names, listComma), bytes.Index(names, listAnd)
		switch {
		case i >= 0 && (j < 0 || i < j):
			name, names = names[:i], names[i+len(listComma):]
		case j >= 0:
			name, names = names[:j], names[j+len(listAnd):]
		default:
			names = nil
		}
		if id, ok := parseUser(name, c.f.runID); ok && (id >= len(r.roomOf) || r.roomOf[id] != own) {
			r.st[c.id].leakedOther++
		}
	}
}

// layout describes the room plan for the report.
func (r *roomsRun) layout() *RoomsStats {
	s := &RoomsStats{Rooms: r.f.cfg.Rooms.Small, MembersMin: math.MaxInt}
	for k, m := range r.members {
		if k == r.big {
			s.Big, s.BigSenders = len(m), r.senders[k]
			continue
		}
		s.MembersMin, s.MembersMax = min(s.MembersMin, len(m)), max(s.MembersMax, len(m))
	}
	return s
}

// waitBarriers is fleet.waitBarrier for rooms: a barrier reaches one room
// only, so the first live reading member of every room with an
// unconfirmed member sends one (a fresh epoch every 200 ms) until every
// live reading client saw its room's, or the timeout passes. It returns
// how many never did.
func (r *roomsRun) waitBarriers(ctx context.Context) int {
	f := r.f
	deadline := time.Now().Add(f.cfg.Timeout)
	for epoch := 1; ; epoch++ {
		pending := false
		for _, m := range r.members {
			var from *client
			waiting := false
			for _, id := range m {
				c := f.clients[id]
				if c.slow || !f.alive(c) {
					continue
				}
				if from == nil {
					from = c
				}
				if c.barrier.Load() == 0 {
					waiting = true
					break
				}
			}
			if waiting && from != nil {
				pending = true
				from.sendBench(kindBarrier, epoch) // a failure shows as a dead client
			}
		}
		if !pending {
			return 0
		}
		if left, done := f.awaitEpoch(ctx, deadline); done {
			return left
		}
	}
}

// sendAll runs one goroutine per live sender, each sending at its room's
// rate for cfg.Duration; within each class of rooms (small, big) the
// senders' phases are spread evenly over one interval, so the server sees
// a steady stream. It returns the number of failed writes.
func (r *roomsRun) sendAll(ctx context.Context) uint64 {
	f := r.f
	start := time.Now()
	end := start.Add(f.cfg.Duration)
	var wg sync.WaitGroup
	var errs atomic.Uint64
	nsmall := len(r.members)
	if r.big >= 0 {
		nsmall--
	}
	for k, m := range r.members {
		interval := time.Duration(float64(time.Second) / r.rate[k])
		for j, id := range m[:r.senders[k]] {
			c := f.clients[id]
			if !f.alive(c) {
				continue
			}
			f.activeSenders++
			phase := interval * time.Duration(k) / time.Duration(max(nsmall, 1))
			if k == r.big {
				phase = interval * time.Duration(j) / time.Duration(r.senders[k])
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				f.sendPaced(ctx, c, start.Add(phase), end, interval, r.maxSeq[k], func(err error) bool {
					errs.Add(1)
					return !isTimeout(err)
				})
			}()
		}
	}
	wg.Wait()
	return errs.Load()
}

// expectedOf is how many messages client id is owed: everything its
// room's senders sent (sending has ended).
func (r *roomsRun) expectedOf(id int32) uint64 {
	k := r.roomOf[id]
	var n uint64
	for _, s := range r.members[k][:r.senders[k]] {
		n += r.f.clients[s].sent.Load()
	}
	return n
}

// judge splits the clients into receivers (connected for the whole run)
// and gone (disconnected), in one pass like runTraffic, and sums what the
// receivers are owed and have received.
func (r *roomsRun) judge(receivers, gone []*client) (_, _ []*client, expected, distinct uint64) {
	receivers, gone = r.f.splitClients(receivers, gone, func(c *client) {
		expected += r.expectedOf(int32(c.id))
		distinct += r.st[c.id].distinct.Load()
	})
	return receivers, gone, expected, distinct
}

func runRooms(ctx context.Context, cfg *Config) (Result, error) {
	return runRoomsWith(ctx, cfg, nil)
}

// runRoomsWith is runRooms; tweak, if not nil, may change the room plan
// before any client dials (a test uses it to make the plan wrong).
func runRoomsWith(ctx context.Context, cfg *Config, tweak func(*roomsRun)) (Result, error) {
	res := Result{Scenario: "rooms"}
	if err := checkRooms(cfg); err != nil {
		return res, err
	}
	f := newFleet(cfg, cfg.Conns)
	r := f.rooms
	if tweak != nil {
		tweak(r)
	}
	run := startScenario(cfg, f)
	defer run.close()

	start, err := run.startSending(ctx, nil, &res)
	if err != nil {
		return res, err
	}
	res.SendErrors = r.sendAll(ctx)
	if err := run.startDraining(ctx, &res); err != nil {
		return res, err
	}
	var receivers, gone []*client
	var expected, distinct uint64
	deadline := time.Now().Add(cfg.Drain)
	for {
		receivers, gone, expected, distinct = r.judge(receivers, gone)
		if distinct >= expected || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	run.window(ctx, &res)
	run.stop()

	r.account(&res, receivers, gone, start)
	return res, roomsVerdict(&res)
}

// account fills res from the clients, after their readers exited.
func (r *roomsRun) account(res *Result, receivers, gone []*client, start int64) {
	f := r.f
	rs := res.Rooms
	if rs == nil {
		rs = r.layout()
		res.Rooms = rs
	}
	var leaked, leakedOther, dups, unexpected uint64
	for i := range r.st {
		st := &r.st[i]
		leaked += st.leaked
		leakedOther += st.leakedOther
		dups += st.dups
		unexpected += st.unexpected
	}
	rs.Leaked, rs.LeakedOther, rs.Duplicates, rs.Unexpected = &leaked, &leakedOther, &dups, &unexpected

	classes := []*RoomClass{{Class: "small", Rooms: rs.Rooms}}
	if r.big >= 0 {
		classes = append(classes, &RoomClass{Class: "big", Rooms: 1})
	}
	for k, m := range r.members {
		cl := classes[0]
		if k == r.big {
			cl = classes[1]
		}
		cl.Senders += r.senders[k]
		cl.RatePerSender = r.rate[k]
		for _, s := range m[:r.senders[k]] {
			cl.Sent += f.clients[s].sent.Load()
		}
	}
	byClass := make([][]*client, len(classes))
	end := start
	for _, c := range receivers {
		k := int(r.roomOf[c.id])
		ci := 0
		if k == r.big {
			ci = 1
		}
		cl := classes[ci]
		byClass[ci] = append(byClass[ci], c)
		exp, got := r.expectedOf(int32(c.id)), r.st[c.id].distinct.Load()
		cl.Receivers++
		cl.Expected += exp
		cl.Deliveries += c.deliveries.Load()
		cl.Lost += int64(exp - min(got, exp))
		end = max(end, c.lastDelivery)
	}
	res.DurationSeconds = float64(end-start) / 1e9
	res.Receivers = len(receivers)
	res.Deliveries, res.Expected, res.Lost = 0, 0, 0
	for i, cl := range classes {
		cl.Latency = mergeLatency(byClass[i])
		if res.DurationSeconds > 0 {
			cl.DeliveriesPerSec = float64(cl.Deliveries) / res.DurationSeconds
		}
		res.Deliveries += cl.Deliveries
		res.Expected += cl.Expected
		res.Lost += cl.Lost
		rs.Classes = append(rs.Classes, *cl)
	}
	if res.DurationSeconds > 0 {
		res.DeliveriesPerSec = float64(res.Deliveries) / res.DurationSeconds
	}
	res.Latency = mergeLatency(receivers)
	if res.Server.CPUSeconds != nil && res.Deliveries > 0 {
		res.CPUUsPerDeliver = ptr(*res.Server.CPUSeconds * 1e6 / float64(res.Deliveries))
	}
	res.Senders = f.activeSenders
	res.Disconnected, res.DisconnectCodes, res.DisconnectWhy = disconnects(gone, nil)
	for _, c := range f.clients {
		res.ServerErrors += c.serverErrors
		res.Unparsed += c.unparsed
	}
}

// roomsVerdict turns a rooms run that broke isolation, lost or duplicated
// messages, or lost clients into an error (after the report): each of
// these means the server did not give every client exactly its room.
func roomsVerdict(res *Result) error {
	rs := res.Rooms
	var why []string
	if n, o := deref(rs.Leaked), deref(rs.LeakedOther); n+o > 0 {
		why = append(why, fmt.Sprintf("%d messages and %d barriers/notices leaked from another room", n, o))
	}
	if res.Lost > 0 {
		why = append(why, fmt.Sprintf("%d of %d deliveries lost", res.Lost, res.Expected))
	}
	if n := deref(rs.Duplicates); n > 0 {
		why = append(why, fmt.Sprintf("%d duplicate deliveries", n))
	}
	if n := deref(rs.Unexpected); n > 0 {
		why = append(why, fmt.Sprintf("%d own-room messages that no sender sent", n))
	}
	if res.Disconnected > 0 {
		why = append(why, fmt.Sprintf("%d clients disconnected%s", res.Disconnected, codes(res.DisconnectCodes)))
	}
	if res.Sent == 0 {
		why = append(why, "nothing was sent")
	}
	if len(why) == 0 {
		return nil
	}
	return errors.New("rooms: " + strings.Join(why, "; "))
}

// RoomsStats is the room layout and, for the rooms scenario, the
// isolation figures (nil for idle).
type RoomsStats struct {
	Rooms      int `json:"rooms"`
	MembersMin int `json:"members_min"`
	MembersMax int `json:"members_max"`
	Big        int `json:"big_room_members,omitempty"`
	BigSenders int `json:"big_room_senders,omitempty"`

	Leaked      *uint64     `json:"leaked,omitempty"`
	LeakedOther *uint64     `json:"leaked_barriers_notices,omitempty"`
	Duplicates  *uint64     `json:"duplicates,omitempty"`
	Unexpected  *uint64     `json:"unexpected,omitempty"`
	Classes     []RoomClass `json:"classes,omitempty"`
}

// RoomClass is the traffic of the small rooms or of the big room.
type RoomClass struct {
	Class            string   `json:"class"`
	Rooms            int      `json:"rooms"`
	Senders          int      `json:"senders"`
	RatePerSender    float64  `json:"rate_per_sender"`
	Sent             uint64   `json:"sent"`
	Receivers        int      `json:"receivers"`
	Deliveries       uint64   `json:"deliveries"`
	Expected         uint64   `json:"deliveries_expected"`
	Lost             int64    `json:"lost"`
	DeliveriesPerSec float64  `json:"deliveries_per_sec"`
	Latency          *Latency `json:"latency_ms,omitempty"`
}

// roomsRows prints the room layout and, for the rooms scenario, its traffic.
func roomsRows(row rowFunc, r *Result) {
	rs := r.Rooms
	if rs == nil {
		return
	}
	layout := fmt.Sprintf("%d  (%d–%d clients each)", rs.Rooms, rs.MembersMin, rs.MembersMax)
	if rs.Big > 0 {
		layout += fmt.Sprintf(" + 1 big room of %d", rs.Big)
	}
	row("rooms", "%s", layout)
	if rs.Leaked == nil {
		return
	}
	row("sent", "%d  (%d senders, %d send errors)", r.Sent, r.Senders, r.SendErrors)
	row("receivers", "%d  (connected for the whole run)", r.Receivers)
	row("deliveries", "%d of %d expected  (%.0f/s over %.2fs)", r.Deliveries, r.Expected, r.DeliveriesPerSec, r.DurationSeconds)
	row("lost", "%d%s", r.Lost, pct(r.Lost, r.Expected))
	row("leaked", "%d messages, %d barriers/notices  (from another room; must be 0)", *rs.Leaked, deref(rs.LeakedOther))
	row("duplicates", "%d", deref(rs.Duplicates))
	if n := deref(rs.Unexpected); n > 0 {
		row("unexpected", "%d  (own-room messages no sender sent)", n)
	}
	if l := r.Latency; l != nil {
		row("latency ms", "p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  (%d samples)", l.P50, l.P90, l.P99, l.Max, l.Count)
	}
	if len(rs.Classes) < 2 {
		return
	}
	for _, cl := range rs.Classes {
		lat := ""
		if l := cl.Latency; l != nil {
			lat = fmt.Sprintf(", p50 %.2f p99 %.2f ms", l.P50, l.P99)
		}
		row("  "+cl.Class, "%d rooms, %d senders × %.3g msg/s: %d sent, %d of %d delivered (%.0f/s), %d lost%s",
			cl.Rooms, cl.Senders, cl.RatePerSender, cl.Sent, cl.Deliveries, cl.Expected, cl.DeliveriesPerSec, cl.Lost, lat)
	}
}
