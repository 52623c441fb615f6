package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
)

// portsPerSource is how many client connections we put on one loopback
// source address before moving to the next, staying below the default
// ephemeral port range (~28k ports).
const portsPerSource = 5000

// fleet is the set of bench connections of one run.
type fleet struct {
	cfg     *Config
	runID   string
	base    time.Time
	clock   int64 // ns added to time.Since(base): see Config.clockEpoch
	n       int   // clients of this process: global ids first .. first+n-1
	first   int
	senders int // number of measured senders (for per-sender order checks)
	// activeSenders is how many of them were connected when sending began.
	activeSenders int
	clients       []*client

	wg        sync.WaitGroup // reader goroutines
	connected atomic.Int64   // once per connection, not per frame
	failed    atomic.Int64
	dialing   atomic.Bool

	connectStart time.Time
	connectEnd   time.Time
	closeOnce    sync.Once

	errMu    sync.Mutex
	dialErrs map[string]int
	firstErr string // the first dial/upgrade error, for the exit message

	soak  *soak     // non-nil in the soak scenario
	rooms *roomsRun // non-nil when the clients are spread over rooms (rooms.go)
	track *tracker  // non-nil with -track (track.go)
	// rejoined are the clients dialled again after a disconnect (-rejoin,
	// rejoin.go); closed with the others, never receivers.
	rejoined []*client
	// lastSeq is, per sender id, the last sequence attempted by any
	// process of the run (set when sending ended).
	lastSeq []int
}

// newFleet prepares n clients; their structs exist before any dial so the
// progress ticker can read their atomics without synchronising on the slice.
func newFleet(cfg *Config, n int) *fleet { return newFleetRange(cfg, 0, n) }

// newFleetRange prepares the clients of global ids lo .. hi-1 (a shard's).
func newFleetRange(cfg *Config, lo, hi int) *fleet {
	var b [runIDLen / 2]byte
	rand.Read(b[:])
	f := &fleet{cfg: cfg, runID: hex.EncodeToString(b[:]), base: time.Now(), n: hi - lo, first: lo, dialErrs: map[string]int{}}
	if cfg.runID != "" {
		f.runID = cfg.runID
	}
	if cfg.clockEpoch != 0 {
		f.clock = f.base.UnixNano() - cfg.clockEpoch
	}
	multi := len(cfg.targets()) > 1
	f.clients = make([]*client, f.n)
	for i := range f.clients {
		id := lo + i
		c := &client{f: f, id: id, name: userName(f.runID, id)}
		if multi {
			c.node = cfg.nodeOf(id)
		}
		f.clients[i] = c
	}
	if cfg.Rooms.Small > 0 {
		f.rooms = newRoomsRun(f)
	}
	return f
}

// now is the bench clock: nanoseconds since the fleet's monotonic base, so
// send and receive timestamps compare directly within this process.
func (f *fleet) now() int64 { return int64(time.Since(f.base)) + f.clock }

// errFDLimit is returned when the process ran out of file descriptors.
var errFDLimit = errors.New("open-file limit reached (EMFILE): every connection needs one fd in this process; " +
	"lower -conns or run several bench processes")

// connect dials and joins every client, at most cfg.DialWorkers handshakes
// in flight and at most cfg.DialRate new connections per second. isSlow
// selects clients that join but never read. Dial failures are counted, not
// fatal, except running out of file descriptors, which aborts the ramp-up.
func (f *fleet) connect(ctx context.Context, isSlow func(id int) bool) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	f.dialing.Store(true)
	defer f.dialing.Store(false)
	f.connectStart = time.Now()

	ids := make(chan int)
	go func() {
		defer close(ids)
		var tick <-chan time.Time
		if f.cfg.DialRate > 0 {
			t := time.NewTicker(time.Second / time.Duration(f.cfg.DialRate))
			defer t.Stop()
			tick = t.C
		}
		for i := range f.n {
			if tick != nil {
				select {
				case <-tick:
				case <-ctx.Done():
					return
				}
			}
			select {
			case ids <- i:
			case <-ctx.Done():
				return
			}
		}
	}()

	var wg sync.WaitGroup
	for range max(1, f.cfg.DialWorkers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				c := f.clients[id]
				c.slow = isSlow != nil && isSlow(id)
				err := f.dial(ctx, c)
				if err == nil {
					f.connected.Add(1)
					continue
				}
				f.failed.Add(1)
				f.noteDialErr(err)
				if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
					cancel(errFDLimit)
				}
				if errors.Is(err, syscall.EADDRNOTAVAIL) {
					cancel(errors.New("no free local ports (EADDRNOTAVAIL): use more source addresses (-local-addrs) or fewer -conns"))
				}
			}
		}()
	}
	wg.Wait()
	f.connectEnd = time.Now()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// dial opens one connection, performs the handshake and sends the join.
func (f *fleet) dial(ctx context.Context, c *client) error {
	nd := net.Dialer{Timeout: f.cfg.Timeout}
	if f.cfg.LocalAddrs > 1 {
		nd.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+c.id%f.cfg.LocalAddrs))}
	}
	if c.slow {
		// A small receive buffer makes a non-reading client back up the
		// server quickly instead of parking megabytes in our kernel.
		nd.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			})
			return serr
		}
	}
	d := ws.Dialer{Timeout: f.cfg.Timeout, NetDial: nd.DialContext}
	conn, br, _, err := d.Dial(ctx, f.dialURL(c))
	if err != nil {
		return err
	}
	if br == nil {
		br = bufio.NewReaderSize(conn, readBufSize)
	}
	c.nc, c.br = conn, br
	c.rbuf = make([]byte, 256)
	if f.cfg.storm {
		c.seen = make([]uint64, (f.n+63)/64)
	}
	if f.track != nil {
		c.got = make([]uint64, f.track.words)
	}
	c.wbuf = appendFrame(nil, ws.OpText, joinFrame(c.name))
	conn.SetWriteDeadline(time.Now().Add(f.cfg.Timeout))
	if _, err := conn.Write(c.wbuf); err != nil {
		conn.Close()
		return err
	}
	c.up.Store(true)
	if !c.slow {
		f.wg.Add(1)
		go c.readLoop()
	}
	return nil
}

// noteDialErr keeps a histogram of dial errors for the report.
func (f *fleet) noteDialErr(err error) {
	msg := errText(err)
	f.errMu.Lock()
	f.dialErrs[msg]++
	if f.firstErr == "" {
		f.firstErr = msg
	}
	f.errMu.Unlock()
}

// splitClients sorts the clients into receivers (not slow, connected for
// the whole run) and gone (disconnected), reusing the slices' storage, and
// calls receiver for each receiver as it is added.
func (f *fleet) splitClients(receivers, gone []*client, receiver func(*client)) (_, _ []*client) {
	receivers, gone = receivers[:0], gone[:0]
	for _, c := range f.clients {
		switch {
		case c.slow || !c.up.Load():
		case c.dead.Load():
			gone = append(gone, c)
		default:
			receivers = append(receivers, c)
			receiver(c)
		}
	}
	return receivers, gone
}

// alive reports clients that are connected and not disconnected.
func (f *fleet) alive(c *client) bool { return c.up.Load() && !c.dead.Load() }

// waitBarrier proves that the server has registered the joins: the sender
// broadcasts barrier messages (every 200 ms, a fresh epoch) until every live
// reading client has received one or the timeout passes. It returns how
// many live reading clients never saw one.
func (f *fleet) waitBarrier(ctx context.Context, sender *client) int {
	deadline := time.Now().Add(f.cfg.Timeout)
	for epoch := 1; ; epoch++ {
		if !f.alive(sender) {
			return f.unconfirmed()
		}
		if err := sender.sendBench(kindBarrier, epoch); err != nil {
			return f.unconfirmed()
		}
		if left, done := f.awaitEpoch(ctx, deadline); done {
			return left
		}
	}
}

// awaitEpoch gives the barrier epoch just sent 200 ms to reach every live
// reading client, looking every 50 ms. done says the wait is over: every
// client saw one (left is 0), ctx ended or deadline passed (left is how
// many never did).
func (f *fleet) awaitEpoch(ctx context.Context, deadline time.Time) (left int, done bool) {
	for range 4 {
		select {
		case <-ctx.Done():
			return f.unconfirmed(), true
		case <-time.After(50 * time.Millisecond):
		}
		if f.unconfirmed() == 0 {
			return 0, true
		}
	}
	if time.Now().After(deadline) {
		return f.unconfirmed(), true
	}
	return 0, false
}

func (f *fleet) unconfirmed() int {
	n := 0
	for _, c := range f.clients {
		if !c.slow && f.alive(c) && c.barrier.Load() == 0 {
			n++
		}
	}
	return n
}

// connectConfirmed connects every client (isSlow picks the ones that never
// read; nil for none), records the ramp-up in res, then proves the joins
// were registered with barrier messages, recording how many reading clients
// never saw one. One barrier costs one delivery per connection.
func (f *fleet) connectConfirmed(ctx context.Context, isSlow func(int) bool, prog *progress, res *Result) error {
	err := f.connect(ctx, isSlow)
	res.fillConnect(f)
	if err != nil {
		return err
	}
	prog.setPhase("barrier")
	first := f.firstAlive()
	if first == nil {
		if err := res.connectErr(); err != nil {
			return fmt.Errorf("no client connected: %w", err)
		}
		return errors.New("no client connected (every reading client was gone before the barrier)")
	}
	if f.rooms != nil { // a barrier reaches one room only: one per room
		res.Rooms = f.rooms.layout()
		res.Unconfirmed = f.rooms.waitBarriers(ctx)
		return ctx.Err()
	}
	res.Unconfirmed = f.waitBarrier(ctx, first)
	return ctx.Err()
}

// firstAlive returns the first live reading client, or nil.
func (f *fleet) firstAlive() *client {
	for _, c := range f.clients {
		if !c.slow && f.alive(c) {
			return c
		}
	}
	return nil
}

// totals sums the live counters; safe while the run is going.
func (f *fleet) totals() (alive int, deliveries, notices, sent uint64) {
	for _, c := range f.clients {
		if f.alive(c) {
			alive++
		}
		deliveries += c.deliveries.Load()
		notices += c.notices.Load()
		sent += c.sent.Load()
	}
	return
}

// closeAll closes every connection and waits for the readers to exit, after
// which all plain client fields may be read. Only the first call acts.
func (f *fleet) closeAll() { f.closeOnce.Do(f.doCloseAll) }

func (f *fleet) doCloseAll() {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range append(f.clients[:len(f.clients):len(f.clients)], f.rejoined...) {
		if !c.up.Load() {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			c.close()
			<-sem
		}()
	}
	wg.Wait()
	f.wg.Wait()
}

// disconnects counts the clients picked by filter by close code, and the
// errors behind the abnormal ones (1006: reset, EOF, timeout...).
func disconnects(clients []*client, filter func(*client) bool) (n int, codes, reasons map[string]int) {
	codes, reasons = map[string]int{}, map[string]int{}
	for _, c := range clients {
		if !c.dead.Load() || (filter != nil && !filter(c)) {
			continue
		}
		n++
		codes[fmt.Sprint(c.closeCode)]++
		if c.endErr != nil {
			reasons[errText(c.endErr)]++
		}
	}
	return n, codes, reasons
}

// errText shortens a net error to its cause, so equal causes group.
func errText(err error) string {
	var ne *net.OpError
	if errors.As(err, &ne) && ne.Err != nil {
		return ne.Op + ": " + ne.Err.Error()
	}
	return err.Error()
}
