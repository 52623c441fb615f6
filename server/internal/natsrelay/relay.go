// Package natsrelay carries a gochat hub's messages to the other nodes of a
// cluster through NATS, and theirs back (SPEC §6). It implements chat.Relay;
// the hub does not know it is NATS, and this package does not know the hub:
// what other nodes publish goes to the Inbound function it was given.
package natsrelay

import (
	cryptorand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// Relay relays the chat between gochat nodes through NATS (SPEC §6): every
// message and notice the local hub accepts is also published on one NATS
// subject, and what other nodes publish there is handed to Inbound, for the
// local members only (never republished).
//
// Hot path. The hub hands each accepted message to Publish, which only
// appends a compact binary record to an in-memory queue under a mutex: no
// JSON, no per-recipient work, and no worker ever writes to the NATS socket.
// One relay goroutine takes the whole queue at a time and publishes it as a
// few NATS messages (up to relayChunk bytes each), so under load the NATS
// cost per chat message falls just as the hub's does. The queue is bounded
// (maxRelayQueue); past it, and whenever NATS refuses a publish (down longer
// than its reconnect buffer covers), records are dropped and counted in
// gochat_cluster_publish_errors_total. Local chat never waits on NATS.
//
// Order. A sender's messages are enqueued one after the other by its
// connection's owner, so they enter the relay queue in send order, leave it
// in order on one NATS connection, which NATS delivers in publication order
// to each subscriber, whose single subscription goroutine enqueues them in
// order into its hub. Per sender, every receiver on every node sees send
// order; messages of different senders may interleave differently on
// different nodes.
//
// Wire format of one NATS message: version byte (relayVersion), the 8-byte
// node id of the publisher, then records, each three length-prefixed
// fields: uvarint(len(room)) room uvarint(len(name)) name
// uvarint(len(content)) content. The node id lets a node drop its own
// messages should they ever come back (the connection also asks the server
// for NoEcho, so normally they do not).
//
// Goroutines: the relay goroutine plus the NATS client's own (reader,
// flusher, callbacks, one subscription); none grows with connections.
//
// Known limitation: usernames are unique per node only. Two clients on two
// nodes may both join as "alice"; their messages are then indistinguishable
// to receivers. Every node also trusts whatever is published on the subject:
// NATS must be reachable by gochat nodes only.
type Relay struct {
	log     *slog.Logger
	inbound Inbound
	nc      *nats.Conn
	subject string
	id      [8]byte // this node, in every message it publishes

	mu      sync.Mutex // Protects following.
	queue   []byte     // records waiting for the relay goroutine
	spare   []byte     // the relay's previous queue, reused
	stopped bool       // Close has begun: Publish drops

	wake   chan struct{} // cap 1: the queue became non-empty, or stop
	done   chan struct{} // closed when the relay goroutine returns
	closed chan struct{} // closed by the NATS ClosedHandler
	ending atomic.Bool   // Close has begun: inbound retries stop

	publishErrors prometheus.Counter
	received      prometheus.Counter
	dropped       prometheus.Counter
}

const (
	relayVersion  = 2
	relayHeader   = 1 + 8    // version, node id
	relayChunk    = 64 << 10 // target NATS payload per publish
	maxRelayQueue = 8 << 20  // bytes of records waiting; beyond, drop
	reconnectBuf  = 1 << 20  // NATS client buffer while disconnected
	drainTimeout  = 2 * time.Second
	busyRetries   = 40 // receive side: waits ~1s in all for a full hub queue
)

// Inbound takes a message another node published in room, for the local
// members only. It reads its arguments only during the call, and fails
// when the room's broadcast queue is full.
type Inbound func(room, name, content []byte) error

// Config says where the relay connects.
type Config struct {
	URL     string // NATS URL, or comma-separated URLs
	Subject string // the subject the nodes of one chat share
	Auth    Auth   // credentials and TLS (auth.go)
}

// New connects to cfg.URL and subscribes to cfg.Subject; its metrics go to
// reg. If the server is not reachable yet, the connection keeps retrying in
// the background (forever, with capped exponential backoff) and local chat
// works meanwhile.
func New(cfg Config, inbound Inbound, reg prometheus.Registerer, log *slog.Logger) (*Relay, error) {
	c := &Relay{
		log:     log,
		inbound: inbound,
		subject: cfg.Subject,
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		closed:  make(chan struct{}),
	}
	if _, err := cryptorand.Read(c.id[:]); err != nil {
		return nil, fmt.Errorf("gochat: node id: %w", err)
	}
	counter := func(name, help string) prometheus.Counter {
		m := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "gochat", Name: name, Help: help})
		reg.MustRegister(m)
		return m
	}
	c.publishErrors = counter("cluster_publish_errors_total", "Messages not relayed to other nodes (NATS down past its reconnect buffer, or relay queue full).")
	c.received = counter("cluster_received_total", "Messages and notices received from other nodes through NATS.")
	c.dropped = counter("cluster_receive_drops_total", "Messages from other nodes dropped: malformed, or the local broadcast queue stayed full.")

	log = log.With("component", "nats")
	nodeName := "gochat-" + hex.EncodeToString(c.id[:])
	opts := []nats.Option{
		nats.Name(nodeName),
		nats.NoEcho(),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.IgnoreAuthErrorAbort(),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.ReconnectBufSize(reconnectBuf),
		nats.FlusherTimeout(5 * time.Second),
		nats.DrainTimeout(drainTimeout),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("nats connected", "url", nc.ConnectedUrlRedacted(), "node", nodeName)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("nats disconnected; local chat continues, reconnecting", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("nats error", "err", err)
		}),
		nats.ClosedHandler(func(*nats.Conn) {
			log.Debug("nats connection closed")
			close(c.closed)
		}),
	}
	auth, err := cfg.Auth.Options()
	if err != nil {
		return nil, err
	}
	opts = append(opts, auth...)
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("gochat: nats %s: %w", RedactURL(cfg.URL), err)
	}
	c.nc = nc
	if _, err := nc.Subscribe(c.subject, c.onMsg); err != nil {
		nc.Close()
		return nil, fmt.Errorf("gochat: nats subscribe %q: %w", c.subject, err)
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "gochat", Name: "cluster_connected",
		Help: "1 while the NATS connection to the other nodes is up."}, func() float64 {
		if nc.IsConnected() {
			return 1
		}
		return 0
	}))
	if !nc.IsConnected() {
		log.Warn("nats not reachable yet; retrying in the background, local chat works meanwhile", "url", RedactURL(cfg.URL))
	}
	go c.relay()
	return c, nil
}

// reconnectDelay backs off 250 ms doubling to 5 s, plus up to 25% jitter so
// that nodes do not reconnect in lockstep.
func reconnectDelay(attempts int) time.Duration {
	d := min(250*time.Millisecond<<min(max(attempts-1, 0), 5), 5*time.Second)
	return d + rand.N(d/4+1)
}

// Publish queues one accepted message or notice for the other nodes. It
// never blocks on NATS. Safe for concurrent use.
func (c *Relay) Publish(room, name string, content []byte) {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	if len(c.queue) > maxRelayQueue {
		c.mu.Unlock()
		c.publishErrors.Inc()
		return
	}
	idle := len(c.queue) == 0
	c.queue = appendRecord(c.queue, room, name, content)
	if idle {
		select {
		case c.wake <- struct{}{}:
		default: // the relay is already due to take the queue
		}
	}
	c.mu.Unlock()
}

// relay publishes the queue until close, then what was queued before it.
func (c *Relay) relay() {
	defer close(c.done)
	out := make([]byte, relayHeader, relayHeader+relayChunk)
	out[0] = relayVersion
	copy(out[1:], c.id[:])
	failing := false
	for {
		<-c.wake // a value, or closed by close
		c.mu.Lock()
		batch := c.queue
		c.queue, c.spare = c.spare[:0], nil
		stopped := c.stopped
		c.mu.Unlock()
		out, failing = c.send(batch, out, failing)
		if cap(batch) <= 4*relayChunk { // keep a moderate buffer, not a burst's
			c.mu.Lock()
			c.spare = batch[:0]
			c.mu.Unlock()
		}
		if stopped {
			return
		}
	}
}

// send publishes batch as NATS messages of about relayChunk bytes each,
// split between records. out holds the header. Run by the relay only.
func (c *Relay) send(batch, out []byte, failing bool) ([]byte, bool) {
	for len(batch) > 0 {
		n, records := 0, 0
		for n < len(batch) {
			l := recordLen(batch[n:])
			if n > 0 && n+l > relayChunk {
				break
			}
			n += l
			records++
		}
		out = append(out[:relayHeader], batch[:n]...)
		batch = batch[n:]
		if err := c.nc.Publish(c.subject, out); err != nil {
			c.publishErrors.Add(float64(records))
			if !failing {
				c.log.Warn("nats publish failing; messages not relayed to other nodes", "err", err)
			}
			failing = true
			continue
		}
		if failing {
			c.log.Info("nats publish recovered")
		}
		failing = false
	}
	return out, failing
}

// onMsg broadcasts to the local members what another node published. It
// runs on the subscription's goroutine, one message at a time, in order.
func (c *Relay) onMsg(m *nats.Msg) {
	d := m.Data
	if len(d) < relayHeader || d[0] != relayVersion {
		c.dropped.Inc()
		return
	}
	if [8]byte(d[1:relayHeader]) == c.id {
		return // our own, come back
	}
	d = d[relayHeader:]
	n := 0
	for len(d) > 0 {
		room, name, content, rest, ok := readRecord(d)
		if !ok {
			c.dropped.Inc()
			break
		}
		d = rest
		n++
		c.deliver(room, name, content)
	}
	c.received.Add(float64(n))
}

// deliver hands a remote message to Inbound. A full local queue is
// retried for about a second (this goroutine may wait; workers never do),
// then the message is dropped and counted.
func (c *Relay) deliver(room, name, content []byte) {
	for try := 0; ; try++ {
		if c.inbound(room, name, content) == nil {
			return
		}
		if try == busyRetries || c.ending.Load() {
			c.dropped.Inc()
			return
		}
		time.Sleep(time.Millisecond << min(try, 5))
	}
}

// Close flushes what is queued, drains the NATS connection (bounded by
// drainTimeout) and waits for it to close. Later calls return at once.
func (c *Relay) Close() {
	c.ending.Store(true)
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	c.stopped = true
	close(c.wake) // the relay publishes the rest and returns
	c.mu.Unlock()
	select {
	case <-c.done:
	case <-time.After(drainTimeout):
		// Stuck on a NATS socket that accepts nothing: closing it ends the write.
	}
	if err := c.nc.Drain(); err != nil {
		c.nc.Close()
	}
	select {
	case <-c.closed:
	case <-time.After(drainTimeout + time.Second):
		c.nc.Close()
		<-c.closed
	}
	<-c.done
}

// appendRecord appends one relay record.
func appendRecord(dst []byte, room, name string, content []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(room)))
	dst = append(dst, room...)
	dst = binary.AppendUvarint(dst, uint64(len(name)))
	dst = append(dst, name...)
	dst = binary.AppendUvarint(dst, uint64(len(content)))
	return append(dst, content...)
}

// recordLen is the length of the well-formed record at the start of b.
func recordLen(b []byte) int {
	i := 0
	for range 3 {
		l, k := binary.Uvarint(b[i:])
		i += k + int(l)
	}
	return i
}

// readRecord splits the first record off b; ok is false if b is malformed.
func readRecord(b []byte) (room, name, content, rest []byte, ok bool) {
	var f [3][]byte
	for i := range f {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return nil, nil, nil, nil, false
		}
		f[i], b = b[k:k+int(l)], b[k+int(l):]
	}
	return f[0], f[1], f[2], b, true
}

// ValidSubject reports whether s is a NATS subject one can publish to:
// dot-separated non-empty tokens, no whitespace, no wildcards.
func ValidSubject(s string) bool {
	if s == "" {
		return false
	}
	for _, tok := range strings.Split(s, ".") {
		if tok == "" || tok == "*" || tok == ">" || strings.ContainsFunc(tok, unicode.IsSpace) {
			return false
		}
	}
	return true
}

// RedactURL hides the credentials of nats://user:pass@host URLs (a
// comma-separated list too) in errors and logs.
func RedactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		at := strings.LastIndexByte(u, '@')
		if at < 0 {
			continue
		}
		scheme := strings.Index(u, "://")
		if scheme < 0 || scheme > at {
			parts[i] = "[redacted]@" + u[at+1:]
		} else {
			parts[i] = u[:scheme+3] + "[redacted]@" + u[at+1:]
		}
	}
	return strings.Join(parts, ",")
}
