package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// The soak scenario keeps -conns clients connected for -duration while
// -senders of them send, -churn healthy clients per second leave (close
// 1000) and are replaced by new ones, and -slow-pct percent never read. It
// samples the server every -sample and compares it before, during and
// after the run: a leak shows as RSS, goroutines or fds that grow with the
// churn or do not come back down once every client is gone.
//
// Loss. A healthy client's join is confirmed by the first text frame the
// server sends it (its own join notice, or any broadcast): from then on it
// is a member. Every measured message whose send timestamp is at or after
// that confirmation is owed to it, per sender in send order. The harness
// counts as lost:
//   - a gap in a sender's sequence (the client got seq q, then q+k: k−1
//     lost), for every healthy client, including ones that later churn or
//     are disconnected — they were connected before and after the gap;
//   - owed messages before the first one the client got from a sender
//     (looked up in the sender's send-time log);
//   - at the end, for every healthy client still connected, the owed
//     messages after the last one it got from each sender (the tail),
//     once the drain is over.
//
// Gaps are found when the next message arrives, so the per-sample "lost"
// column is "lost so far" and the final total adds the tails. Slow clients
// are never counted in loss or latency.
//
// Slow clients never read. The server evicts them (1008) when their backlog
// passes its send queue; a client that never reads cannot see that close
// frame, which sits behind the backlog. So once a second each one writes an
// unsolicited pong (RFC 6455 §5.5.3 — it also keeps the server's keepalive
// from dropping it) and checks its TCP state: a socket the server has
// closed answers with a reset, or shows a FIN. An evicted client then reads
// what is left (to find the close frame when it reached us; else the
// code is 1006 and the error names the reset) and is replaced by a new slow
// client. The server's own count, gochat_slow_consumer_disconnects_total,
// is reported next to it.

const (
	// latSub sub-buckets per power of two: 6% wide latency buckets.
	latSub     = 16
	latBuckets = latSub * 23 // up to 2^27 µs > histMax
	// soakInflight bounds concurrent churn/replace operations, so a server
	// that stops answering cannot make the harness pile up goroutines.
	soakInflight = 64
	// soakProbe is how often slow clients are probed and dead slots refilled.
	soakProbe = time.Second
	// soakCloseWait bounds the wait for the server's echo of our close.
	soakCloseWait = 2 * time.Second
	// tcpEstablished is TCP_ESTABLISHED in struct tcp_info's tcpi_state.
	tcpEstablished = 1
	// slowMetric is the server's count of slow-consumer closes.
	slowMetric = "gochat_slow_consumer_disconnects_total"
)

// latHist is a per-client latency histogram in µs with atomic buckets, so
// the sampler can read it while the client's reader records into it: one
// uncontended atomic add per delivery, no allocation.
type latHist struct{ b [latBuckets]atomic.Uint64 }

func latIndex(us int64) int {
	v := uint64(max(us, 0))
	if v < latSub {
		return int(v)
	}
	e := bits.Len64(v) - 5 // v>>e is in [16, 32)
	return min(latSub*(e+1)+int(v>>e)-latSub, latBuckets-1)
}

// latValue is the midpoint of bucket i in µs.
func latValue(i int) float64 {
	if i < latSub {
		return float64(i)
	}
	e := i/latSub - 1
	m := uint64(i%latSub + latSub)
	return float64(m<<e) + float64(uint64(1)<<e)/2
}

type latCounts [latBuckets]uint64

func (l *latCounts) add(h *latHist) {
	for i := range l {
		l[i] += h.b[i].Load()
	}
}

func (l *latCounts) total() (n uint64) {
	for _, v := range l {
		n += v
	}
	return n
}

// quantile returns the q-quantile (0..1) in ms, or false when empty.
func (l *latCounts) quantile(q float64) (float64, bool) {
	n := l.total()
	if n == 0 {
		return 0, false
	}
	rank := uint64(math.Ceil(q * float64(n)))
	var cum uint64
	for i, v := range l {
		cum += v
		if cum >= max(rank, 1) {
			return latValue(i) / 1e3, true
		}
	}
	return latValue(latBuckets-1) / 1e3, true
}

// SoakSample is one row of the soak time series.
type SoakSample struct {
	ElapsedSeconds    float64  `json:"elapsed_s"`
	RSSBytes          *uint64  `json:"rss_bytes,omitempty"`
	Goroutines        *int     `json:"goroutines,omitempty"`
	FDs               *int     `json:"fds,omitempty"`
	CPUSeconds        *float64 `json:"cpu_seconds,omitempty"`
	ServerConnections *int     `json:"server_connections,omitempty"`
	Connected         int      `json:"connected"`
	Sent              uint64   `json:"sent"`
	DeliveriesPerSec  float64  `json:"deliveries_per_sec"`
	Lost              uint64   `json:"lost"`
	P99Ms             *float64 `json:"p99_ms"`
	Churned           int      `json:"churned"`
	SlowEvicted       int      `json:"slow_evicted"`
}

// soakAcc holds what the clients that are gone measured.
type soakAcc struct {
	deliveries, lost, outOfOrder, serverErrors, unparsed, foreign uint64
	lat                                                           latCounts
	latMax                                                        int64
	lastDelivery                                                  int64

	churned, healthyGone, slowEvicted, replaceFails int
	slowBacklog                                     uint64
	codes, why, slowCodes, slowWhy                  map[string]int
	churnCodes, replaceErrs                         map[string]int
}

// fold adds a client whose reader has exited.
func (a *soakAcc) fold(c *client) {
	if c.slow {
		a.slowBacklog += c.deliveries.Load()
	} else {
		a.deliveries += c.deliveries.Load()
		a.lost += c.lost.Load()
		a.outOfOrder += c.outOfOrder
		a.foreign += c.foreign
		a.lastDelivery = max(a.lastDelivery, c.lastDelivery)
		if c.lat != nil {
			a.lat.add(c.lat)
		}
		a.latMax = max(a.latMax, c.latMax)
	}
	a.serverErrors += c.serverErrors
	a.unparsed += c.unparsed
}

type soak struct {
	f       *fleet
	cfg     *Config
	senders []*client
	// logs[s][q] is the bench time sender s sent its message q at.
	logs  [][]atomic.Int64
	slowN int

	mu       sync.Mutex
	slots    []*client // nil while being replaced
	busy     []bool    // slot has a churn/replace operation in flight
	retiring map[*client]struct{}
	acc      soakAcc
	nextID   int

	// ctx is the run's: operations started before the end of the
	// duration finish (their dials are not cut short by the stop).
	ctx      context.Context
	ops      sync.WaitGroup
	inflight atomic.Int64
	skipped  atomic.Uint64 // churn ticks that found no client or too many ops in flight
}

func newSoak(f *fleet, cfg *Config, slowN int) *soak {
	s := &soak{f: f, cfg: cfg, slowN: slowN, retiring: map[*client]struct{}{}, nextID: f.n}
	per := int(math.Ceil(cfg.Duration.Seconds()*cfg.Rate)) + 2
	s.logs = make([][]atomic.Int64, cfg.Senders)
	for i := range s.logs {
		s.logs[i] = make([]atomic.Int64, per)
	}
	a := &s.acc
	a.codes, a.why, a.slowCodes, a.slowWhy = map[string]int{}, map[string]int{}, map[string]int{}, map[string]int{}
	a.churnCodes, a.replaceErrs = map[string]int{}, map[string]int{}
	return s
}

func (s *soak) logSend(sender, seq int, ts int64) {
	if sender < len(s.logs) && seq >= 0 && seq < len(s.logs[sender]) {
		s.logs[sender][seq].Store(ts)
	}
}

// logAt is the send time of sender's message seq (0 if unknown).
func (s *soak) logAt(sender, seq int) int64 {
	if seq < 0 || seq >= len(s.logs[sender]) {
		return 0
	}
	return s.logs[sender][seq].Load()
}

// lastSent is the highest sequence sender wrote completely: senders stop at
// their first write error, so it is also their count.
func (s *soak) lastSent(sender int) int { return int(s.senders[sender].sent.Load()) }

// measured accounts for one measured message in the soak (reader goroutine).
func (s *soak) measured(c *client, bc benchContent, now int64) {
	if c.lat == nil { // a slow client reading its backlog after eviction
		return
	}
	us := min(max((now-bc.ts)/1e3, 1), histMax)
	c.lat.b[latIndex(us)].Add(1)
	c.latMax = max(c.latMax, us)
	sd := bc.sender
	if sd >= len(s.senders) {
		c.foreign++
		return
	}
	if c.lastSeq == nil {
		c.lastSeq = make([]int32, len(s.senders))
		for i := range c.lastSeq {
			c.lastSeq[i] = -1
		}
	}
	last, seq := c.lastSeq[sd], int32(bc.seq)
	if seq <= last {
		c.outOfOrder++
		return
	}
	var miss uint64
	if last < 0 {
		// First message from this sender: the ones it sent since our join
		// was confirmed and before this one are owed too.
		conf := c.confAt.Load()
		for q := int(seq) - 1; q >= 1 && s.logAt(sd, q) >= conf; q-- {
			miss++
		}
		c.seqSum.Add(int64(seq))
	} else {
		miss = uint64(seq - last - 1)
		c.seqSum.Add(int64(seq - last))
	}
	if miss > 0 {
		c.lost.Add(miss)
	}
	c.lastSeq[sd] = seq
}

// tail returns the owed messages after the last one c got from each sender
// (after its reader exited). unconfirmed: no frame at all ever arrived.
func (s *soak) tail(c *client) (miss uint64, unconfirmed bool) {
	conf := c.confAt.Load()
	if conf == 0 {
		return 0, true
	}
	for sd := range s.senders {
		last := s.lastSent(sd)
		got := -1
		if c.lastSeq != nil {
			got = int(c.lastSeq[sd])
		}
		if got >= 0 {
			miss += uint64(max(last-got, 0))
			continue
		}
		for q := last; q >= 1 && s.logAt(sd, q) >= conf; q-- {
			miss++
		}
	}
	return miss, false
}

// complete reports whether c got the last message of every sender.
func (s *soak) complete(c *client, target int64) bool { return c.seqSum.Load() >= target }

func (s *soak) newClient(slow bool) *client {
	s.mu.Lock()
	id := s.nextID
	s.nextID++
	s.mu.Unlock()
	c := &client{f: s.f, id: id, name: userName(s.f.runID, id), slow: slow, exited: make(chan struct{})}
	if !slow {
		c.lat = new(latHist)
	}
	return c
}

// take removes c from its slot and marks the slot busy; false if the slot
// is already busy or holds another client. Caller holds s.mu.
func (s *soak) takeLocked(slot int, c *client) bool {
	if s.busy[slot] || s.slots[slot] != c {
		return false
	}
	s.busy[slot] = true
	s.slots[slot] = nil
	if c != nil {
		s.retiring[c] = struct{}{}
	}
	return true
}

// settle folds a retired client (reader exited) into the totals.
func (s *soak) settleLocked(c *client) {
	delete(s.retiring, c)
	s.acc.fold(c)
	c.br, c.rbuf, c.sbuf, c.wbuf = nil, nil, nil, nil
}

// refill dials a new client into slot (busy) and frees the slot.
func (s *soak) refill(ctx context.Context, slot int, slow bool) {
	c := s.newClient(slow)
	err := s.f.dial(ctx, c)
	c.joinedAt = s.f.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.busy[slot] = false
	if err != nil {
		s.acc.replaceFails++
		s.acc.replaceErrs[errText(err)]++
		return
	}
	s.slots[slot] = c
}

// goOp runs fn as a bounded churn/replace operation.
func (s *soak) goOp(fn func()) {
	s.ops.Add(1)
	s.inflight.Add(1)
	go func() {
		defer s.ops.Done()
		defer s.inflight.Add(-1)
		fn()
	}()
}

// churnOne closes c with 1000, waits for the server's echo, and replaces it.
func (s *soak) churnOne(ctx context.Context, slot int, c *client) {
	c.closing.Store(true)
	c.wmu.Lock()
	frame := appendFrame(c.pbuf[:0], ws.OpClose, []byte{0x03, 0xe8})
	c.nc.SetWriteDeadline(time.Now().Add(s.cfg.Timeout))
	c.nc.Write(frame)
	c.wmu.Unlock()
	t := time.NewTimer(soakCloseWait)
	select {
	case <-c.exited:
	case <-t.C:
	}
	t.Stop()
	c.nc.Close()
	<-c.exited
	s.mu.Lock()
	if c.dead.Load() { // the server closed it first: not ours
		s.gone(c)
	} else {
		s.acc.churned++
		code := "none"
		if c.echoCode != 0 {
			code = fmt.Sprint(c.echoCode)
		}
		s.acc.churnCodes[code]++
	}
	s.settleLocked(c)
	s.mu.Unlock()
	s.refill(ctx, slot, false)
}

// gone counts a healthy client the server disconnected. Caller holds s.mu.
func (s *soak) gone(c *client) {
	s.acc.healthyGone++
	s.acc.codes[fmt.Sprint(c.closeCode)]++
	if c.endErr != nil {
		s.acc.why[errText(c.endErr)]++
	}
}

// evictOne collects an evicted slow client: it reads what is left for the
// close frame, then a new slow client takes its slot.
func (s *soak) evictOne(ctx context.Context, slot int, c *client, replace bool) {
	c.nc.SetReadDeadline(time.Now().Add(time.Second))
	code, err := c.readFrames()
	if isTimeout(err) {
		err = errors.New("no close within 1s after the socket closed")
	}
	c.closeCode, c.endErr = code, err
	c.dead.Store(true)
	c.nc.Close()
	close(c.exited)
	s.mu.Lock()
	s.acc.slowEvicted++
	s.acc.slowCodes[fmt.Sprint(code)]++
	s.acc.codes[fmt.Sprint(code)]++
	if err != nil {
		s.acc.slowWhy[errText(err)]++
		s.acc.why[errText(err)]++
	}
	s.settleLocked(c)
	s.mu.Unlock()
	if replace {
		s.refill(ctx, slot, true)
	} else {
		s.mu.Lock()
		s.busy[slot] = false
		s.mu.Unlock()
	}
}

// maintain runs once per soakProbe until ctx ends: probes slow clients,
// replaces healthy clients the server dropped, refills empty slots.
func (s *soak) maintain(ctx context.Context) {
	t := time.NewTicker(min(soakProbe, s.cfg.Sample))
	defer t.Stop()
	type probe struct {
		slot int
		c    *client
	}
	var slow []probe
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		slow = slow[:0]
		s.mu.Lock()
		for i, c := range s.slots {
			switch {
			case s.busy[i]:
			case c == nil || !c.up.Load():
				if i < len(s.senders) || s.inflight.Load() >= soakInflight {
					continue // a sender is never replaced
				}
				if c != nil { // its dial failed at ramp-up
					s.slots[i] = nil
				}
				s.busy[i] = true
				slot, isSlow := i, i >= len(s.slots)-s.slowN
				s.goOp(func() { s.refill(s.ctx, slot, isSlow) })
			case c.slow:
				slow = append(slow, probe{i, c})
			case c.dead.Load() && i >= len(s.senders) && s.inflight.Load() < soakInflight:
				s.takeLocked(i, c)
				slot := i
				s.goOp(func() {
					<-c.exited
					s.mu.Lock()
					s.gone(c)
					s.settleLocked(c)
					s.mu.Unlock()
					s.refill(s.ctx, slot, false)
				})
			}
		}
		s.mu.Unlock()
		for _, p := range slow {
			if !s.probeSlow(p.c) {
				continue
			}
			s.mu.Lock()
			ok := s.takeLocked(p.slot, p.c)
			s.mu.Unlock()
			if ok {
				s.goOp(func() { s.evictOne(s.ctx, p.slot, p.c, true) })
			}
		}
	}
}

// probeSlow reports whether the server has closed a non-reading client's
// connection; otherwise it writes an unsolicited pong, which keeps the
// client alive for the server's keepalive and makes a closed server socket
// answer with a reset that the next probe sees.
func (s *soak) probeSlow(c *client) bool {
	if closedTCP(c.nc) {
		return true
	}
	c.wmu.Lock()
	frame := appendFrame(c.pbuf[:0], ws.OpPong, nil)
	c.nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, err := c.nc.Write(frame)
	c.wmu.Unlock()
	// On loopback the reset usually arrives before Write returns.
	return (err != nil && !isTimeout(err)) || closedTCP(c.nc)
}

// closedTCP reports whether the peer closed or reset nc.
func closedTCP(nc net.Conn) bool {
	st := tcpState(nc)
	return st != 0 && st != tcpEstablished
}

// finalProbe collects, at the end of the run, the slow clients the server
// evicted since the last probe (not replaced any more). The server closes
// an evicted client's socket only after its close linger (gochat
// -close-linger, 2 s by default): until then the socket looks established,
// so one probe would miss every eviction of the last seconds — a run that
// ends as the slow clients fill their queues showed "slow evicted 0" while
// the server counted one per slow client. So it probes until the bench has
// seen as many evictions as serverSlow (the server's count since the start,
// ok false when unknown) reports, or cfg.EvictWait passes.
func (s *soak) finalProbe(ctx context.Context, serverSlow func() (int, bool)) {
	deadline := time.Now().Add(s.cfg.EvictWait)
	for {
		s.probeRound(ctx)
		if s.slowN == 0 || ctx.Err() != nil || !time.Now().Before(deadline) {
			return
		}
		s.mu.Lock()
		seen := s.acc.slowEvicted
		s.mu.Unlock()
		if n, ok := serverSlow(); ok && seen >= n {
			return
		}
		time.Sleep(min(200*time.Millisecond, time.Until(deadline)))
	}
}

// probeRound probes every slow client once and collects the evicted ones.
func (s *soak) probeRound(ctx context.Context) {
	var gone []int
	for i, c := range s.slots {
		if c != nil && c.slow && c.up.Load() && !s.busy[i] && s.probeSlow(c) {
			gone = append(gone, i)
		}
	}
	time.Sleep(100 * time.Millisecond) // for resets still on their way
	for i, c := range s.slots {
		if c != nil && c.slow && c.up.Load() && !s.busy[i] && !slices.Contains(gone, i) && closedTCP(c.nc) {
			gone = append(gone, i)
		}
	}
	s.mu.Lock()
	for _, i := range gone {
		c := s.slots[i]
		s.takeLocked(i, c)
		s.goOp(func() { s.evictOne(ctx, i, c, false) })
	}
	s.mu.Unlock()
	s.ops.Wait()
}

// tcpState is the kernel TCP state of nc (1 = established), 0 if unknown.
func tcpState(nc net.Conn) uint8 {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	var st uint8
	rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			st = info.State
		}
	})
	return st
}

// churn closes and replaces cfg.Churn random healthy non-sender clients per
// second until ctx ends.
func (s *soak) churn(ctx context.Context) {
	if s.cfg.Churn <= 0 {
		return
	}
	t := time.NewTicker(time.Duration(float64(time.Second) / s.cfg.Churn))
	defer t.Stop()
	lo, hi := len(s.senders), len(s.slots)-s.slowN
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if hi <= lo || s.inflight.Load() >= soakInflight {
			s.skipped.Add(1)
			continue
		}
		picked := false
		s.mu.Lock()
		for range 8 {
			i := lo + rand.IntN(hi-lo)
			c := s.slots[i]
			if c == nil || !s.f.alive(c) || !s.takeLocked(i, c) {
				continue
			}
			picked = true
			s.goOp(func() { s.churnOne(s.ctx, i, c) })
			break
		}
		s.mu.Unlock()
		if !picked {
			s.skipped.Add(1)
		}
	}
}

// live sums the counters of every client now, folded or not.
type soakLive struct {
	connected           int
	deliveries, lost    uint64
	lat                 latCounts
	churned, slowEvicts int
}

func (s *soak) live() (l soakLive) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l.deliveries, l.lost, l.lat = s.acc.deliveries, s.acc.lost, s.acc.lat
	l.churned, l.slowEvicts = s.acc.churned, s.acc.slowEvicted
	add := func(c *client) {
		if c.slow {
			return
		}
		l.deliveries += c.deliveries.Load()
		l.lost += c.lost.Load()
		l.lat.add(c.lat)
	}
	for _, c := range s.slots {
		if c == nil {
			continue
		}
		if s.f.alive(c) {
			l.connected++
		}
		add(c)
	}
	for c := range s.retiring {
		add(c)
	}
	return l
}

func (s *soak) sent() (n uint64) {
	for _, c := range s.senders {
		n += c.sent.Load()
	}
	return n
}

// runSoak is the soak scenario; see the comment at the top of this file.
// Its phases, in order: check the flags, connect, run (send, churn, evict,
// sample), drain, final probe, collect who is left, settle, report.
func runSoak(ctx context.Context, cfg *Config) (Result, error) {
	res := Result{Scenario: "soak", Senders: cfg.Senders}
	slowN, err := soakSlowCount(cfg)
	if err != nil {
		return res, err
	}
	smp := newSampler(cfg.PID, cfg.MetricsURL)
	baseline, m0 := smp.sampleMetrics(ctx)

	s := newSoakRun(ctx, cfg, slowN)
	if err := s.connect(ctx, &res); err != nil {
		return res, err
	}
	series := &soakSeries{s: s, smp: smp}
	t0, sendEnd, sendErrs := s.runTraffic(ctx, series)
	s.drain(ctx)
	serverSlow := func() (int, bool) {
		v0, ok0 := m0[slowMetric]
		v1, ok1 := smp.metrics(ctx)[slowMetric]
		return int(v1 - v0), ok0 && ok1
	}
	s.finalProbe(ctx, serverSlow)
	series.take(ctx, time.Now())
	// The server's count over the same window as the bench's: before the
	// bench closes its clients.
	if n, ok := serverSlow(); ok {
		res.ServerSlowConsumers = ptr(n)
	}
	s.collect(&res, sendEnd)
	after := s.settle(ctx, smp, &res)

	res.Sent = s.sent()
	res.SendErrors = sendErrs
	res.Senders = s.f.activeSenders
	s.fillTraffic(&res, t0, sendEnd)
	s.fillClients(&res)
	res.Samples = series.rows
	fillServerWindow(&res, baseline, after, series.rows)
	return res, nil
}

// soakSlowCount checks the soak's flags and returns how many of -conns
// never read (-slow-pct, at least one when it is above 0).
func soakSlowCount(cfg *Config) (int, error) {
	slowN := int(math.Round(float64(cfg.Conns) * cfg.SlowPct / 100))
	if cfg.SlowPct > 0 {
		slowN = max(slowN, 1)
	}
	if err := checkTraffic(cfg, slowN); err != nil {
		return 0, err
	}
	switch {
	case cfg.Sample <= 0 || cfg.Duration <= 0:
		return 0, errors.New("-sample and -duration must be > 0")
	case cfg.Churn < 0 || cfg.SlowPct < 0:
		return 0, errors.New("-churn and -slow-pct must be >= 0")
	}
	return slowN, nil
}

// newSoakRun prepares the fleet and the soak's state: the last slowN
// clients never read, the first cfg.Senders send.
func newSoakRun(ctx context.Context, cfg *Config, slowN int) *soak {
	f := newFleet(cfg, cfg.Conns)
	f.senders = cfg.Senders
	s := newSoak(f, cfg, slowN)
	f.soak = s
	s.ctx = ctx
	for i, c := range f.clients {
		c.exited = make(chan struct{})
		if !s.isSlowID(i) {
			c.lat = new(latHist)
		}
	}
	s.senders = f.clients[:cfg.Senders:cfg.Senders]
	return s
}

// isSlowID reports whether the client of ramp-up id id never reads.
func (s *soak) isSlowID(id int) bool { return id >= s.cfg.Conns-s.slowN }

// connect ramps every client up and confirms the joins, then hands the
// clients to the soak's slots: f.clients keeps only the senders (sendAll
// reads them) until the final close.
func (s *soak) connect(ctx context.Context, res *Result) error {
	f := s.f
	prog := startProgress(f, s.cfg.Progress)
	err := f.connectConfirmed(ctx, s.isSlowID, prog, res)
	prog.end()
	if err != nil {
		f.closeAll()
		return err
	}
	s.slots = append([]*client(nil), f.clients...)
	s.busy = make([]bool, len(s.slots))
	f.clients = f.clients[:s.cfg.Senders:s.cfg.Senders]
	return nil
}

// runTraffic sends for cfg.Duration while churn and maintain run in the
// background, taking a sample every cfg.Sample. It returns the bench time
// sending started and ended, and the senders' write errors.
func (s *soak) runTraffic(ctx context.Context, series *soakSeries) (t0, sendEnd int64, sendErrs uint64) {
	f, cfg := s.f, s.cfg
	start := time.Now()
	t0 = f.now()
	bg, stopBG := context.WithCancel(ctx)
	var bgWG sync.WaitGroup
	bgWG.Add(2)
	go func() { defer bgWG.Done(); s.churn(bg) }()
	go func() { defer bgWG.Done(); s.maintain(bg) }()
	sendDone := make(chan uint64, 1)
	go func() { sendDone <- f.sendAll(ctx, cfg) }()
	series.start(start)

	tick := time.NewTicker(cfg.Sample)
wait:
	for {
		select {
		case sendErrs = <-sendDone:
			break wait
		case now := <-tick.C:
			series.take(ctx, now)
		}
	}
	tick.Stop()
	stopBG()
	bgWG.Wait()
	s.ops.Wait()
	return t0, f.now(), sendErrs
}

// drain waits, at most cfg.Drain, until every healthy client still
// connected got the last message of every sender. Clients confirmed after
// some sender's last message are owed only part of the tail, which they
// cannot signal; the tail accounting covers them, the drain waits for the
// others.
func (s *soak) drain(ctx context.Context) {
	var target int64
	lastTS := int64(math.MaxInt64)
	for sd := range s.senders {
		target += int64(s.lastSent(sd))
		if n := s.lastSent(sd); n > 0 {
			lastTS = min(lastTS, s.logAt(sd, n))
		}
	}
	deadline := time.Now().Add(s.cfg.Drain)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		done := true
		for _, c := range s.slots {
			if c != nil && !c.slow && s.f.alive(c) && c.confAt.Load() != 0 && c.confAt.Load() <= lastTS && !s.complete(c, target) {
				done = false
				break
			}
		}
		if done {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// collect closes every client left and folds it into the totals. Who is
// still here decides who owes a tail.
func (s *soak) collect(res *Result, sendEnd int64) {
	var final []*client
	var endAlive []bool
	for _, c := range s.slots {
		if c != nil {
			final = append(final, c)
			endAlive = append(endAlive, s.f.alive(c))
		}
	}
	s.f.clients = final
	s.f.closeAll()
	a := &s.acc
	for i, c := range final {
		switch {
		case c.slow || !c.up.Load():
		case endAlive[i]:
			miss, unconf := s.tail(c)
			a.lost += miss
			if unconf && c.joinedAt < sendEnd-int64(time.Second) {
				res.Unconfirmed++
			}
			res.Receivers++
		default:
			s.gone(c)
		}
		a.fold(c)
	}
}

// settle lets the server release everything (gochat_connections back to
// 0, at most cfg.Settle), then takes the "after" sample.
func (s *soak) settle(ctx context.Context, smp *sampler, res *Result) serverSample {
	settleStart := time.Now()
	if s.cfg.MetricsURL != "" {
		for time.Since(settleStart) < s.cfg.Settle && ctx.Err() == nil {
			if v, ok := smp.metrics(ctx)["gochat_connections"]; !ok || v == 0 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	after, m1 := smp.sampleMetrics(ctx)
	res.SettleSeconds = ptr(math.Round(time.Since(settleStart).Seconds()*100) / 100)
	if v, ok := m1["gochat_connections"]; ok {
		res.ConnectionsAfter = ptr(int(v))
	}
	return after
}

// fillTraffic reports deliveries, loss and latency of the healthy clients.
func (s *soak) fillTraffic(res *Result, t0, sendEnd int64) {
	a := &s.acc
	res.Deliveries = a.deliveries
	res.Lost = int64(a.lost)
	res.OutOfOrder = a.outOfOrder
	res.ServerErrors = a.serverErrors
	res.Unparsed = a.unparsed
	res.DurationSeconds = float64(max(a.lastDelivery, sendEnd)-t0) / 1e9
	if res.DurationSeconds > 0 {
		res.DeliveriesPerSec = float64(res.Deliveries) / res.DurationSeconds
	}
	if n := a.lat.total(); n > 0 {
		p := func(q float64) float64 { v, _ := a.lat.quantile(q); return v }
		res.Latency = &Latency{Count: int64(n), P50: p(0.50), P90: p(0.90), P99: p(0.99), Max: float64(a.latMax) / 1e3}
	}
}

// fillClients reports disconnects, evictions, churn and replacements.
func (s *soak) fillClients(res *Result) {
	a := &s.acc
	res.Disconnected = a.healthyGone + a.slowEvicted
	res.DisconnectCodes, res.DisconnectWhy = a.codes, a.why
	res.HealthyDisconnected = ptr(a.healthyGone)
	res.SlowClients = ptr(s.slowN)
	res.SlowDisconnected = ptr(a.slowEvicted)
	res.SlowEvicted = ptr(a.slowEvicted)
	res.SlowCodes, res.SlowWhy = a.slowCodes, a.slowWhy
	res.SlowBacklog = ptr(a.slowBacklog)
	res.Churned = ptr(a.churned)
	res.ChurnCloseCodes = a.churnCodes
	res.ChurnSkipped = ptr(s.skipped.Load())
	res.ReplaceFailed = ptr(a.replaceFails)
	if len(a.replaceErrs) > 0 {
		res.ReplaceErrors = a.replaceErrs
	}
}

// fillServerWindow reports the server before, at its peak and after.
func fillServerWindow(res *Result, baseline, after serverSample, rows []SoakSample) {
	res.Baseline, res.After = statsOf(baseline), statsOf(after)
	res.Peak = peakOf(baseline, after, rows)
	res.Server = *statsOf(after)
	if baseline.CPU != nil && after.CPU != nil {
		res.Server.CPUSeconds = ptr(*after.CPU - *baseline.CPU)
		if res.Deliveries > 0 {
			res.CPUUsPerDeliver = ptr(*res.Server.CPUSeconds * 1e6 / float64(res.Deliveries))
		}
	}
}

// soakSeries is the soak's time series: one row per take, each compared
// with the previous one for rates and the interval's p99.
type soakSeries struct {
	s      *soak
	smp    *sampler
	t0     time.Time
	prev   soakLive
	prevAt time.Time
	rows   []SoakSample
}

func (ss *soakSeries) start(now time.Time) {
	ss.t0, ss.prevAt, ss.prev = now, now, ss.s.live()
}

// take samples the server and the clients and appends a row (and prints
// the progress line).
func (ss *soakSeries) take(ctx context.Context, now time.Time) {
	s, cfg := ss.s, ss.s.cfg
	srv, m := ss.smp.sampleMetrics(ctx)
	l := s.live()
	dt := now.Sub(ss.prevAt).Seconds()
	r := SoakSample{
		ElapsedSeconds: math.Round(now.Sub(ss.t0).Seconds()*10) / 10,
		RSSBytes:       srv.RSS, Goroutines: srv.Goroutines, FDs: srv.FDs, CPUSeconds: srv.CPU,
		Connected: l.connected, Sent: s.sent(), Lost: l.lost,
		Churned: l.churned, SlowEvicted: l.slowEvicts,
	}
	if v, ok := m["gochat_connections"]; ok {
		r.ServerConnections = ptr(int(v))
	}
	if dt > 0 {
		r.DeliveriesPerSec = math.Round(float64(l.deliveries-ss.prev.deliveries) / dt)
	}
	var iv latCounts
	for i := range iv {
		iv[i] = l.lat[i] - ss.prev.lat[i]
	}
	if p, ok := iv.quantile(0.99); ok {
		r.P99Ms = ptr(p)
	}
	ss.prev, ss.prevAt = l, now
	ss.rows = append(ss.rows, r)
	if cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, "[soak %s] connected %d | sent %d | %.0f deliveries/s | lost %d | p99 %s | churned %d | slow evicted %d | server %s\n",
			time.Duration(r.ElapsedSeconds*float64(time.Second)), r.Connected, r.Sent, r.DeliveriesPerSec, r.Lost,
			fmtMs(r.P99Ms), r.Churned, r.SlowEvicted, fmtServer(srv, r.ServerConnections))
	}
}

func statsOf(s serverSample) *ServerStats {
	return &ServerStats{RSSBytes: s.RSS, CPUSeconds: s.CPU, FDs: s.FDs, Goroutines: s.Goroutines}
}

// peakOf is the highest RSS, goroutines and fds seen (cpu: the last).
func peakOf(baseline, after serverSample, rows []SoakSample) *ServerStats {
	p := statsOf(baseline)
	see := func(rss *uint64, g, fds *int, cpu *float64) {
		if rss != nil && (p.RSSBytes == nil || *rss > *p.RSSBytes) {
			p.RSSBytes = rss
		}
		if g != nil && (p.Goroutines == nil || *g > *p.Goroutines) {
			p.Goroutines = g
		}
		if fds != nil && (p.FDs == nil || *fds > *p.FDs) {
			p.FDs = fds
		}
		if cpu != nil && (p.CPUSeconds == nil || *cpu > *p.CPUSeconds) {
			p.CPUSeconds = cpu
		}
	}
	for _, r := range rows {
		see(r.RSSBytes, r.Goroutines, r.FDs, r.CPUSeconds)
	}
	see(after.RSS, after.Goroutines, after.FDs, after.CPU)
	return p
}

func fmtMs(p *float64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%.1fms", *p)
}

func fmtServer(s serverSample, conns *int) string {
	out := ""
	if s.RSS != nil {
		out += fmt.Sprintf("rss %s ", mib(float64(*s.RSS)))
	}
	if s.Goroutines != nil {
		out += fmt.Sprintf("goroutines %d ", *s.Goroutines)
	}
	if s.FDs != nil {
		out += fmt.Sprintf("fds %d ", *s.FDs)
	}
	if s.CPU != nil {
		out += fmt.Sprintf("cpu %.1fs ", *s.CPU)
	}
	if conns != nil {
		out += fmt.Sprintf("conns %d", *conns)
	}
	if out == "" {
		return "not observed"
	}
	return out
}
