package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gobwas/ws"
)

const (
	// maxFrame bounds a single inbound message; the server never sends more
	// than its content limit plus JSON framing, so anything larger is a bug.
	maxFrame = 1 << 20
	// readBufSize is the bufio size per connection: large enough to batch
	// several broadcast frames per read syscall, small enough for 20k conns.
	readBufSize = 4096
	// latency histograms are in microseconds, 1 µs .. 60 s, 2 significant
	// digits (1% resolution) which keeps one histogram at ~20 KB.
	histMax     = 60_000_000
	histSigFigs = 2
)

// client is one bench WebSocket connection.
//
// The read path (readLoop) runs in one goroutine per connection and does no
// allocation per frame: the header goes into hdr, payloads into the reused
// rbuf/ctrl buffers, and every counter is a field of this client. Counters
// the progress ticker samples while the run is live are atomics touched
// only by this client's reader (uncontended); the rest are plain fields read
// after the reader has exited (ordered by the fleet's WaitGroup).
type client struct {
	f    *fleet
	id   int
	name string
	slow bool // never reads after joining
	node int  // index of the server it dials (several -url)

	nc net.Conn
	br *bufio.Reader

	// wmu serialises writers of this connection (its sender goroutine and
	// the reader answering pings); it is never taken per received frame.
	wmu  sync.Mutex
	sbuf []byte // JSON of the message being sent
	wbuf []byte // masked frame being sent

	pbuf [ws.MaxHeaderSize + 125]byte // pong/close frame built by the reader
	hdr  [ws.MaxHeaderSize - 2]byte
	ctrl [125]byte
	rbuf []byte
	mlen int // bytes of a fragmented message gathered so far

	up         atomic.Bool   // handshake and join written
	dead       atomic.Bool   // connection ended while we were not closing it
	closing    atomic.Bool   // we are closing it: errors are expected
	deliveries atomic.Uint64 // measured chat messages received
	barrier    atomic.Uint64 // highest barrier epoch received
	notices    atomic.Uint64 // join notices of this run's clients received
	sent       atomic.Uint64 // measured messages written (sender only)
	repeats    atomic.Uint64 // outOfOrder, for the drain loop: deliveries not new

	// Read after the reader exited.
	lats         []int32                 // latencies (µs) not yet in hist, see recordLatency
	hist         *hdrhistogram.Histogram // latencies of long runs (more than latBatch)
	lastSeq      []int32                 // per sender, -1 = none yet
	outOfOrder   uint64
	leaves       uint64
	serverErrors uint64
	foreign      uint64
	unparsed     uint64
	dupNotices   uint64
	seen         []uint64 // bitset of client ids whose join notice arrived (storm)
	got          []uint64 // -track: bitset of the measured messages received (track.go)
	sending      bool     // a sender when sending began (set before, read after)
	attempted    int      // the last sequence its sender goroutine tried to send
	ownJoinAt    int64
	lastNoticeAt int64
	lastDelivery int64
	closeCode    int
	endErr       error // what ended the connection, when no close frame did

	// soak only (zero otherwise).
	exited   chan struct{} // closed when the reader exits
	confAt   atomic.Int64  // bench time of the first text frame: join confirmed
	lost     atomic.Uint64 // measured messages missed (sequence gaps), see soak.go
	seqSum   atomic.Int64  // Σ over senders of the highest sequence received
	lat      *latHist      // latency buckets, read live by the sampler
	latMax   int64         // µs, read after the reader exited
	echoCode int           // close code the server echoed to our close, 0 = none
	joinedAt int64         // bench time a replacement client's join was written
}

// frameError marks a protocol violation by the server.
type frameError string

func (e frameError) Error() string { return "server frame: " + string(e) }

// readLoop reads frames until the connection ends.
func (c *client) readLoop() {
	defer c.f.wg.Done()
	if c.exited != nil {
		defer close(c.exited)
	}
	code, err := c.readFrames()
	if c.closing.Load() {
		if err == nil {
			c.echoCode = code
		}
		return
	}
	c.closeCode, c.endErr = code, err
	c.dead.Store(true)
	c.nc.Close()
}

// readFrames returns the close code sent by the server (1006 when the
// connection ended without a close frame) and the error that ended it.
func (c *client) readFrames() (int, error) {
	for {
		h, err := ws.ReadHeaderBuffer(c.br, c.hdr[:])
		if err != nil {
			return int(ws.StatusAbnormalClosure), err
		}
		if h.Length > maxFrame || (h.OpCode.IsControl() && (h.Length > 125 || !h.Fin)) {
			return int(ws.StatusProtocolError), frameError(fmt.Sprintf("bad frame op=%d len=%d", h.OpCode, h.Length))
		}
		n := int(h.Length)
		if h.OpCode.IsControl() {
			p := c.ctrl[:n]
			if _, err := io.ReadFull(c.br, p); err != nil {
				return int(ws.StatusAbnormalClosure), err
			}
			if h.Masked {
				ws.Cipher(p, h.Mask, 0)
			}
			switch h.OpCode {
			case ws.OpPing:
				c.writeControl(ws.OpPong, p)
			case ws.OpClose:
				code := int(ws.StatusNoStatusRcvd)
				if n >= 2 {
					code = int(binary.BigEndian.Uint16(p))
				}
				if !c.closing.Load() { // else this is the echo of our close
					c.writeControl(ws.OpClose, p[:min(n, 2)])
				}
				return code, nil
			}
			continue
		}
		if h.OpCode != ws.OpContinuation {
			c.mlen = 0
		}
		need := c.mlen + n
		if need > maxFrame {
			return int(ws.StatusMessageTooBig), frameError("message too big")
		}
		if need > len(c.rbuf) {
			nb := make([]byte, max(need, 2*len(c.rbuf)))
			copy(nb, c.rbuf[:c.mlen])
			c.rbuf = nb
		}
		p := c.rbuf[c.mlen:need]
		if _, err := io.ReadFull(c.br, p); err != nil {
			return int(ws.StatusAbnormalClosure), err
		}
		if h.Masked {
			ws.Cipher(p, h.Mask, 0)
		}
		c.mlen = need
		if h.Fin {
			c.handle(c.rbuf[:c.mlen])
			c.mlen = 0
		}
	}
}

// handle accounts for one complete server message.
func (c *client) handle(p []byte) {
	user, content, ok := splitMessage(p)
	if !ok {
		c.unparsed++
		return
	}
	if c.exited != nil && c.confAt.Load() == 0 {
		c.confAt.Store(c.f.now())
	}
	if bytes.Equal(user, systemName) {
		if r := c.f.rooms; r != nil {
			r.notice(c, content)
		}
		c.handleSystem(content)
		return
	}
	bc, ok := parseContent(content, c.f.runID)
	if !ok {
		c.foreign++
		return
	}
	if r := c.f.rooms; r != nil {
		r.handle(c, bc)
		return
	}
	switch bc.kind {
	case kindBarrier:
		c.sawBarrier(bc.seq)
	case kindMeasured:
		now := c.delivered()
		if s := c.f.soak; s != nil {
			s.measured(c, bc, now)
			return
		}
		c.recordLatency(now, bc.ts)
		if c.got != nil {
			c.f.track.record(c, bc)
		}
		if c.f.senders > 0 && bc.sender < c.f.senders {
			if c.lastSeq == nil {
				c.lastSeq = make([]int32, c.f.senders)
				for i := range c.lastSeq {
					c.lastSeq[i] = -1
				}
			}
			if int32(bc.seq) <= c.lastSeq[bc.sender] {
				c.outOfOrder++
				c.repeats.Add(1)
			} else {
				c.lastSeq[bc.sender] = int32(bc.seq)
			}
		}
	}
}

// sawBarrier records barrier epoch seq if it is the latest c has seen.
func (c *client) sawBarrier(seq int) {
	if uint64(seq) > c.barrier.Load() {
		c.barrier.Store(uint64(seq))
	}
}

// delivered counts a measured message delivered to c and returns when.
func (c *client) delivered() int64 {
	now := c.f.now()
	c.deliveries.Add(1)
	c.lastDelivery = now
	return now
}

// latBatch is how many latencies a client keeps before it adds them to
// its histogram: a run of a few seconds never touches a histogram while
// it runs. A histogram per client is ~20 KB, cold in the cache at
// thousands of clients; recording into it per message was a tenth of the
// load generator's CPU at 9,000 clients, taken from the server measured
// on the same machine.
const latBatch = 512

// recordLatency records the latency of a message sent at ts and received
// at now (fleet clock, ns) in microseconds, clamped to the histogram.
func (c *client) recordLatency(now, ts int64) {
	switch {
	case c.lats == nil:
		c.lats = make([]int32, 0, latBatch)
	case len(c.lats) == cap(c.lats):
		if c.hist == nil {
			c.hist = hdrhistogram.New(1, histMax, histSigFigs)
		}
		recordAll(c.hist, c.lats)
		c.lats = c.lats[:0]
	}
	c.lats = append(c.lats, int32(min(max((now-ts)/1e3, 1), histMax)))
}

// recordAll adds latencies lats (µs) to h.
func recordAll(h *hdrhistogram.Histogram, lats []int32) {
	for _, v := range lats {
		h.RecordValue(int64(v))
	}
}

// markSeen sets bit i of the bitset seen and reports whether it was
// already set (a duplicate).
func markSeen(seen []uint64, i int) (dup bool) {
	w, b := i/64, uint64(1)<<(i%64)
	if seen[w]&b != 0 {
		return true
	}
	seen[w] |= b
	return false
}

// handleSystem accounts for a System notice or error.
func (c *client) handleSystem(content []byte) {
	switch {
	case bytes.HasSuffix(content, joinedTail):
		id, ok := parseUser(content[:len(content)-len(joinedTail)], c.f.runID)
		if !ok || id >= c.f.n {
			return
		}
		now := c.f.now()
		if c.seen != nil {
			if markSeen(c.seen, id) {
				c.dupNotices++
				return
			}
		}
		c.notices.Add(1)
		c.lastNoticeAt = now
		if id == c.id {
			c.ownJoinAt = now
		}
	case bytes.HasSuffix(content, leftTail):
		c.leaves++
	case bytes.HasPrefix(content, errorPrefix):
		c.serverErrors++
	}
}

// appendFrame appends a masked client frame (RFC 6455 §5.3) carrying
// payload to dst.
func appendFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	dst = append(dst, 0x80|byte(op))
	switch n := len(payload); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	var mask [4]byte
	binary.LittleEndian.PutUint32(mask[:], rand.Uint32())
	dst = append(dst, mask[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	ws.Cipher(dst[start:], mask, 0)
	return dst
}

// writeControl answers a ping or close from the reader goroutine.
func (c *client) writeControl(op ws.OpCode, payload []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	frame := appendFrame(c.pbuf[:0], op, payload)
	c.nc.SetWriteDeadline(time.Now().Add(c.f.cfg.Timeout))
	c.nc.Write(frame) // a failure shows up on the read side
}

// sendBench sends one bench chat message of kind with sequence seq. The
// JSON and the frame are built in the client's reusable buffers.
func (c *client) sendBench(kind byte, seq int) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	ts := c.f.now()
	if s := c.f.soak; s != nil && kind == kindMeasured {
		s.logSend(c.id, seq, ts) // before the write, so no receiver sees it first
	}
	dst := append(c.sbuf[:0], `{"content":"`...)
	dst = appendContent(dst, c.f.runID, kind, ts, c.id, seq, c.f.cfg.Size)
	c.sbuf = append(dst, `"}`...)
	c.wbuf = appendFrame(c.wbuf[:0], ws.OpText, c.sbuf)
	c.nc.SetWriteDeadline(time.Now().Add(c.f.cfg.Timeout))
	_, err := c.nc.Write(c.wbuf)
	return err
}

// close sends a normal close frame and closes the socket. The reader's
// resulting error is expected and not counted as a disconnect.
func (c *client) close() {
	c.closing.Store(true)
	if !c.dead.Load() {
		c.wmu.Lock()
		frame := appendFrame(c.pbuf[:0], ws.OpClose, []byte{0x03, 0xe8}) // 1000
		c.nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		c.nc.Write(frame)
		c.wmu.Unlock()
	}
	c.nc.Close()
}
