package chat

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"gochat/pool"
	"gochat/server/internal/chatmsg"
)

// Config is the chat layer's part of the server configuration, already
// defaulted and validated by the server.
type Config struct {
	MaxContent    int           // characters of content
	Rate          float64       // messages per second per client
	Burst         int           // messages a client may send at once
	ErrorBudget   int           // bad messages per minute before 1008
	Presence      bool          // join/leave notices
	RoundInterval time.Duration // shortest time between broadcast rounds
	Shards        int           // fan-out shards (tasks per round)
	// PresenceSummary is the member count above which join and leave
	// notices are summarized, one per kind per round ("alice, bob and
	// 1,312 others joined the chat"), instead of one per client: a
	// reconnect storm in a large chat is O(n) frames, not O(n²).
	PresenceSummary int
	// MaxBatch caps the bytes of frames one round hands to each member, so
	// that a reader that keeps up never has more than that pending.
	MaxBatch int
	// OutboundFull, if set, reports that the transport's pending output
	// is over its global bound: rounds wait until it drains.
	OutboundFull func() bool
}

// Metrics are the chat layer's series; the server defines and registers
// them with the rest (server/metrics.go).
type Metrics struct {
	Joins, JoinRejects, Leaves prometheus.Counter
	MessagesIn, Published      prometheus.Counter
	Deliveries, BytesOut       prometheus.Counter
	Rounds, BusyRejects        prometheus.Counter
	RateLimited, ErrorBudget   prometheus.Counter
	BroadcastLatency           prometheus.Histogram
}

// Hub is the chat room: the joined members, their names, and the broadcast
// pipeline (round.go). Its methods are safe for concurrent use.
type Hub struct {
	cfg     Config
	pool    *pool.Pool
	metrics *Metrics
	log     *slog.Logger
	relay   Relay // nil on a single node

	draining atomic.Bool // shutting down: no more notices

	namesMu sync.Mutex          // Protects names.
	names   map[string]*Session // uniqueness key -> member

	shards []shard

	rounds rounds
}

// shard is a slice of the members, fanned out by one task per round.
type shard struct {
	h       *Hub
	mu      sync.Mutex // Protects members, and Session.member of each of them.
	members []*Session
	snap    []*Session // the round's copy of members; owned by the shard task
}

// NewHub returns an empty hub whose rounds run on p. relay may be nil.
func NewHub(cfg Config, p *pool.Pool, m *Metrics, relay Relay, log *slog.Logger) *Hub {
	h := &Hub{
		cfg:     cfg,
		pool:    p,
		metrics: m,
		log:     log,
		relay:   relay,
		names:   make(map[string]*Session),
		shards:  make([]shard, max(1, cfg.Shards)),
	}
	for i := range h.shards {
		h.shards[i].h = h
	}
	h.rounds.init(h)
	return h
}

// Members returns the number of joined clients.
func (h *Hub) Members() int {
	h.namesMu.Lock()
	defer h.namesMu.Unlock()
	return len(h.names)
}

// Drain stops join and leave notices: the server is shutting down and
// every client is about to get close 1001 instead.
func (h *Hub) Drain() { h.draining.Store(true) }

// join registers s under name if no member has its key. Called by s's task.
func (h *Hub) join(s *Session, name, key string) error {
	h.namesMu.Lock()
	defer h.namesMu.Unlock()
	if _, taken := h.names[key]; taken {
		return chatmsg.ErrUsernameTaken
	}
	h.names[key] = s
	s.name, s.key, s.joined = name, key, true
	sh := &h.shards[s.id%len(h.shards)]
	sh.mu.Lock()
	s.member = len(sh.members)
	sh.members = append(sh.members, s)
	sh.mu.Unlock()
	return nil
}

// leave unregisters s and, unless the hub is draining, tells the others.
// Called by s's task; does nothing if s is not a member, so a session
// leaves exactly once.
func (h *Hub) leave(s *Session) {
	if !s.joined {
		return
	}
	s.joined = false
	h.namesMu.Lock()
	delete(h.names, s.key)
	sh := &h.shards[s.id%len(h.shards)]
	sh.mu.Lock()
	last := len(sh.members) - 1
	moved := sh.members[last]
	sh.members[s.member] = moved
	moved.member = s.member
	sh.members[last] = nil
	sh.members = sh.members[:last]
	s.member = -1
	sh.mu.Unlock()
	h.namesMu.Unlock()
	h.metrics.Leaves.Inc()
	h.log.Debug("leave", "conn", s.id)
	if h.cfg.Presence && !h.draining.Load() {
		h.notice(s.name, left)
	}
}

// notice tells every member that name joined or left. In a large chat, or
// when the broadcast queue is full, it is left to the round's summary
// (rounds.summarize); a notice is never dropped.
func (h *Hub) notice(name string, kind noticeKind) {
	if h.Members() <= h.cfg.PresenceSummary {
		var b [chatmsg.MaxUsername*4 + 32]byte
		content := append(append(b[:0], name...), noticeText[kind]...)
		if h.Publish(chatmsg.SystemName, content) == nil {
			return
		}
	}
	h.rounds.pendNotice(name, kind)
}
