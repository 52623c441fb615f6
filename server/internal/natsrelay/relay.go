// Package natsrelay joins the rooms of several gochat nodes through NATS
// JetStream (SPEC §9). It implements chat.Relay; the hub does not know it
// is NATS, and this package reaches the hub only through the small Hub
// interface.
//
// The stream orders each room. A node publishes what its members say (and
// their joins and leaves) to the room's subject of one stream, with a
// message id of its own (node id and a counter) that JetStream uses to
// drop a duplicate when a publish is retried. The stream stores the
// message, gives it a sequence number, and republishes it with that
// number to the room's live subject; every node with members in the room,
// the sender's included, subscribes to that subject (interest routing) and
// delivers the message with an id made of the sequence (chat.IDsPerSeq).
// So every member on every node sees every message once, in one order per
// room, with one id everywhere; the stream keeps the rooms' recent
// messages, from which a node fills any gap in what it received (the
// republished sequence carries the room's previous one), catches up after
// NATS was away, and loads a room's history when its first member here
// joins, so history and resume work on any node.
//
// NATS down, restarted or hung: a node's accepted messages wait in a
// bounded outbox and are published when NATS is back (exactly once,
// thanks to the message ids); while it is away, or publishes stall for
// longer than stallAfter, the node delivers its own members' messages at
// once (ids between the cluster's), so local chat continues, and the
// stream's copy, when it comes back, is not delivered again here. A full
// outbox refuses the message and the sender is told. Pings every second
// notice a hung server within a few seconds.
//
// Who is in which room lives in two key-value buckets (members.go): names
// are unique per room across the cluster, and a node that stops or dies
// has its members leave everywhere.
//
// Goroutines: the publisher (outbox.go), the receiver (receive.go), the
// roster's presence and heartbeat goroutines (members.go), the members
// watcher, and the NATS client's own; none grows with connections or rooms
// (room subscriptions share one channel). Lock order: Relay locks are
// leaves, except outbox.mu, which Publish and degrade hold while taking
// outbox.deliverMu; the hub is called with deliverMu held at most.
package natsrelay

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"gochat/server/internal/chat"
)

// Hub is what the relay needs of the chat hub (chat.Hub implements it).
type Hub interface {
	Deliver(room string, id uint64, ts int64, m *chat.Message) error
	Load(room string, id uint64, ts int64, m *chat.Message)
	Forget(room string, id uint64)
}

// Config says where the relay connects and what it keeps.
type Config struct {
	URL     string // NATS URL, or comma-separated URLs
	Subject string // subject prefix of the cluster's rooms; names the stream
	// MaxContent is the nodes' -max-content: records above it are dropped.
	MaxContent int
	// History and HistoryAge are the rooms' history bounds; the stream
	// keeps at least as much of every room.
	History    int
	HistoryAge time.Duration
	Auth       Auth // credentials and TLS (auth.go)
}

// Relay is one node's link to the cluster. See the package comment.
type Relay struct {
	cfg     Config
	log     *slog.Logger
	hub     Hub
	nc      *nats.Conn
	js      jetstream.JetStream
	node    string // this node's id: the prefix of its message ids
	stream  string // the stream's name
	inPfx   string // prefix of the subjects the stream stores: inPfx + room token
	livePfx string // prefix of the subjects it republishes to

	// stream is set by the publisher once the stream exists on the server
	// (again after every reconnect); nil while it does not.
	streamH atomic.Pointer[jetstream.Stream]

	out     outbox   // publisher side (outbox.go)
	in      receiver // receiver side (receive.go)
	roster  roster   // who is where (members.go)
	metrics metrics

	quit     chan struct{} // closed by Close
	pubDone  chan struct{} // closed when the publisher returns
	rcvDone  chan struct{} // closed when the receiver returns
	presDone chan struct{} // closed when the presence goroutine returns
	beatDone chan struct{} // closed when the heartbeat goroutine returns (or never started)
	closed   chan struct{} // closed by the NATS ClosedHandler
	started  atomic.Bool
	// lastConnErr is the last reason a connection attempt failed (a
	// string), logged when it changes.
	lastConnErr atomic.Value
}

const (
	reconnectBuf = 4 << 20 // NATS client buffer while disconnected
	drainTimeout = 2 * time.Second
	// stallAfter is how long a publish may wait for the stream's ack
	// before the node treats the cluster as out of reach and delivers its
	// members' messages itself.
	stallAfter = 2 * time.Second
	// apiTimeout bounds one JetStream API call (stream info, fetch).
	apiTimeout = 2 * time.Second
	// dedupWindow is how long the stream remembers message ids: a node
	// cut off from NATS for longer may, on retrying, duplicate a message
	// whose ack it never got.
	dedupWindow = 10 * time.Minute
	// minKeep is the fewest messages the stream keeps of each room, for
	// nodes that fell behind, whatever -history is.
	minKeep = 1000
)

// metrics are the relay's series. None has a room label.
type metrics struct {
	published, received prometheus.Counter
	rejected            prometheus.Counter
	recovered, gaps     prometheus.Counter
	gapsUnknown         prometheus.Counter
	overflow            prometheus.Counter
	unsent              prometheus.Counter
	dropped             *prometheus.CounterVec
	localDeliveries     prometheus.Counter
	ghosts              prometheus.Counter
	nameConflicts       prometheus.Counter
}

// New connects to cfg.URL (in the background if NATS is not reachable
// yet: local chat works meanwhile) and registers the relay's metrics; Start
// begins relaying.
func New(cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Relay, error) {
	var id [8]byte
	if _, err := cryptorand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("gochat: node id: %w", err)
	}
	c := &Relay{
		cfg:      cfg,
		log:      log.With("component", "nats"),
		node:     hex.EncodeToString(id[:]),
		stream:   streamName(cfg.Subject),
		inPfx:    cfg.Subject + ".in.",
		livePfx:  cfg.Subject + ".live.",
		quit:     make(chan struct{}),
		pubDone:  make(chan struct{}),
		rcvDone:  make(chan struct{}),
		presDone: make(chan struct{}),
		beatDone: make(chan struct{}),
		closed:   make(chan struct{}),
	}
	c.out.init()
	c.in.init()
	c.roster.init()
	c.registerMetrics(reg)

	log = c.log
	nodeName := "gochat-" + c.node
	opts := []nats.Option{
		nats.Name(nodeName),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.IgnoreAuthErrorAbort(),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.ReconnectBufSize(reconnectBuf),
		// A hung server (accepting nothing, answering nothing) is noticed
		// after two unanswered pings: within about three seconds.
		nats.PingInterval(time.Second),
		nats.MaxPingsOutstanding(2),
		nats.FlusherTimeout(2 * time.Second),
		nats.DrainTimeout(drainTimeout),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("nats connected", "url", nc.ConnectedUrlRedacted(), "node", nodeName)
			c.reconnected()
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("nats disconnected; local chat continues, reconnecting", "err", err)
			c.streamH.Store(nil)
			c.roster.setLive(false)
			c.out.poke()
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			// Why NATS refuses (authorization, TLS) once per distinct
			// reason, not at every retry. nats.go errors carry no secret.
			if msg := err.Error(); c.lastConnErr.Swap(msg) != msg {
				log.Warn("nats connection failing; retrying", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
			c.reconnected()
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) && sub != nil {
				// Live messages were dropped: the next one of the room shows
				// the gap, but the dropped one may have been its last, so
				// the room is caught up from the stream now.
				c.in.post(func() { c.catchUpSubject(sub.Subject) })
				return
			}
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
	if c.js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2*maxInFlight)); err != nil {
		nc.Close()
		return nil, fmt.Errorf("gochat: jetstream: %w", err)
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "gochat", Name: "cluster_connected",
		Help: "1 while the connection to NATS is up."}, func() float64 { return b2f(nc.IsConnected()) }))
	if !nc.IsConnected() {
		log.Warn("nats not reachable yet; retrying in the background, local chat works meanwhile", "url", RedactURL(cfg.URL))
	}
	return c, nil
}

// Start begins relaying to and from hub.
func (c *Relay) Start(hub Hub) {
	c.hub = hub
	c.started.Store(true)
	go c.publish()
	go c.receive()
	go c.presence()
	c.out.poke()
}

func (c *Relay) registerMetrics(reg prometheus.Registerer) {
	counter := func(name, help string) prometheus.Counter {
		m := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "gochat", Name: name, Help: help})
		reg.MustRegister(m)
		return m
	}
	m := &c.metrics
	m.published = counter("cluster_published_total", "Messages and presence changes this node stored in the cluster's stream.")
	m.received = counter("cluster_received_total", "Messages and presence changes received from the cluster's stream (this node's own included) and delivered here.")
	m.rejected = counter("cluster_publish_rejects_total", "Messages refused because the outbox to the cluster was full; each sender was told.")
	m.recovered = counter("cluster_recovered_total", "Messages this node missed live (slow subscription, NATS away) and then took from the stream.")
	m.gaps = counter("cluster_gaps_total", "Messages of other nodes this node never delivered: missed live and no longer in the stream (counted by the nodes' record numbers).")
	m.gapsUnknown = counter("cluster_gaps_unknown_total", "Times a room's messages were missed that the stream no longer had and whose publisher is not a gochat node (one or more each).")
	m.overflow = counter("cluster_overflow_total", "Live messages the subscriptions dropped because this node did not read them fast enough; the stream's copy is delivered instead while it has one.")
	m.unsent = counter("cluster_unsent_total", "Messages accepted here that were still waiting for the stream when the node shut down.")
	m.ghosts = counter("cluster_departed_total", "Members of nodes that stopped answering (killed, cut off) whose leave this node announced.")
	m.nameConflicts = counter("cluster_name_conflicts_total", "Names held here that another node took while this node was cut off from NATS (both members keep the name).")
	m.localDeliveries = counter("cluster_local_deliveries_total", "Messages this node delivered to its own members without the cluster, while it was out of reach.")
	m.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "gochat", Name: "cluster_dropped_total",
		Help: "Records from the stream not delivered: invalid (not what a node publishes), flood (over the ingress bound), busy (the room's queue stayed full)."},
		[]string{"reason"})
	for _, r := range []string{dropInvalid, dropFlood, dropBusy} {
		m.dropped.WithLabelValues(r)
	}
	reg.MustRegister(m.dropped)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "gochat", Name: "cluster_outbox_messages",
		Help: "Messages accepted here and not yet stored in the cluster's stream."}, func() float64 { return float64(c.out.pending()) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "gochat", Name: "cluster_outbox_age_seconds",
		Help: "Age of the oldest message waiting in the outbox: the relay's lag."}, func() float64 { return c.out.age().Seconds() }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "gochat", Name: "cluster_degraded",
		Help: "1 while the cluster is out of reach: this node delivers its members' messages itself, or cannot check names with the other nodes."}, func() float64 { return b2f(c.Degraded()) }))
}

const (
	dropInvalid = "invalid"
	dropFlood   = "flood"
	dropBusy    = "busy"
)

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// reconnected runs on every (re)connection: the stream must be checked
// again (the server may have lost it), then every room caught up.
func (c *Relay) reconnected() {
	c.streamH.Store(nil)
	c.out.poke()
}

// ensureStream creates or updates the cluster's stream. Run by the
// publisher; on success the receiver catches every room up.
func (c *Relay) ensureStream() error {
	age := c.cfg.HistoryAge
	if age > 0 {
		age = max(age, dedupWindow)
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	st, err := c.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              c.stream,
		Description:       "gochat rooms (" + c.cfg.Subject + ")",
		Subjects:          []string{c.inPfx + "*"},
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxMsgsPerSubject: int64(max(c.cfg.History, minKeep)),
		MaxAge:            age,
		MaxMsgSize:        maxRecord,
		Duplicates:        dedupWindow,
		AllowDirect:       true,
		RePublish:         &jetstream.RePublish{Source: c.inPfx + "*", Destination: c.livePfx + "{{wildcard(1)}}"},
	})
	if err != nil {
		return err
	}
	c.streamH.Store(&st)
	c.in.post(c.catchUpAll)
	c.roster.poke()
	return nil
}

// reconnectDelay backs off 250 ms doubling to 5 s, plus up to 25% jitter so
// that nodes do not reconnect in lockstep.
func reconnectDelay(attempts int) time.Duration {
	d := min(250*time.Millisecond<<min(max(attempts-1, 0), 5), 5*time.Second)
	return d + rand.N(d/4+1)
}

// Close publishes what the outbox holds (for up to drainTimeout), stops
// receiving and closes the NATS connection. Later calls return at once.
func (c *Relay) Close() {
	select {
	case <-c.quit:
		return
	default:
	}
	close(c.quit)
	if c.started.Load() {
		<-c.pubDone
		<-c.rcvDone
		<-c.presDone
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
}

// Room names (SPEC §8: a-z 0-9 - _ .) become one subject token each (and
// one key token in the members bucket): '.' separates tokens, so it is
// written '=', which no room name has and both allow.
func roomToken(room string) string { return strings.ReplaceAll(room, ".", "=") }
func tokenRoom(tok string) string  { return strings.ReplaceAll(tok, "=", ".") }

// streamName derives the stream's name from the subject prefix.
func streamName(subject string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, subject)
}

// ValidSubject reports whether s can prefix the cluster's subjects:
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
