package chat

import (
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"gochat/pool"
)

// Config is the chat layer's part of the server configuration, already
// defaulted and validated by the server.
type Config struct {
	MaxContent    int           // characters of content
	Rate          float64       // messages per second per client
	Burst         int           // messages a client may send at once
	ErrorBudget   int           // bad messages per minute before 1008
	Presence      bool          // join/leave notices
	RoundInterval time.Duration // shortest time between a room's broadcast rounds
	Shards        int           // fan-out tasks per round at most (a room's members spread over the workers)
	// PresenceSummary is the member count above which a room's join and
	// leave notices are summarized, one per kind per round ("alice, bob
	// and 1,312 others joined the chat"), instead of one per client: a
	// reconnect storm in a large room is O(n) frames, not O(n²).
	PresenceSummary int
	// PresenceMax, if positive, is the member count above which a room
	// sends no join or leave notices at all.
	PresenceMax int
	// MaxBatch caps the bytes of frames one round hands to each member, so
	// that a reader that keeps up never has more than that pending.
	MaxBatch int
	// OutboundFull, if set, reports that the transport's pending output
	// is over its global bound: rounds wait until it drains.
	OutboundFull func() bool
	// MaxRooms caps the rooms that exist at once.
	MaxRooms int
	// History is how many messages (chat and notices) each room keeps for
	// replay and resume; 0 keeps none.
	History int
	// HistoryAge drops kept messages older than this; 0 keeps them until
	// History pushes them out.
	HistoryAge time.Duration
}

// Metrics are the chat layer's series; the server defines and registers
// them with the rest (server/metrics.go).
type Metrics struct {
	Joins, JoinRejects, Leaves prometheus.Counter
	MessagesIn, Published      prometheus.Counter
	Deliveries, BytesOut       prometheus.Counter
	Rounds, BusyRejects        prometheus.Counter
	RateLimited, ErrorBudget   prometheus.Counter
	Replayed, Gaps             prometheus.Counter
	BroadcastLatency           prometheus.Histogram
}

// ErrTooManyRooms refuses a client that would open a room past MaxRooms.
var ErrTooManyRooms = errors.New("chat: room limit reached")

// Hub is every room of this node. A room exists while sessions are in it
// (joining or joined) and is freed with its history when the last one
// leaves: an empty room costs nothing. No room has a goroutine; a quiet
// room costs nothing per round. Methods are safe for concurrent use.
type Hub struct {
	cfg     Config
	pool    *pool.Pool
	metrics *Metrics
	log     *slog.Logger
	relay   Relay // nil on a single node
	maxRest time.Duration

	draining atomic.Bool   // shutting down: no more notices
	members  atomic.Int64  // joined clients, all rooms
	history  atomic.Int64  // messages kept, all rooms
	rounds   atomic.Uint64 // completed rounds, all rooms
	ids      idSource

	mu    sync.Mutex // Protects rooms and every Room.refs.
	rooms map[string]*Room
}

// NewHub returns a hub with no rooms whose rounds run on p. relay may be nil.
func NewHub(cfg Config, p *pool.Pool, m *Metrics, relay Relay, log *slog.Logger) *Hub {
	h := &Hub{
		cfg:     cfg,
		pool:    p,
		metrics: m,
		log:     log,
		relay:   relay,
		maxRest: maxRest,
		rooms:   make(map[string]*Room),
	}
	h.ids.init()
	return h
}

// Acquire returns the room called name, creating it if it does not exist,
// and holds it for one session (released by Session.Leave). In a cluster,
// a room new on this node first loads its recent history (bounded by
// watchWait; a room the cluster cannot serve now starts empty).
func (h *Hub) Acquire(name []byte) (*Room, error) {
	h.mu.Lock()
	r := h.rooms[string(name)] // no allocation for the lookup
	if r == nil {
		if len(h.rooms) >= h.cfg.MaxRooms {
			h.mu.Unlock()
			return nil, ErrTooManyRooms
		}
		r = newRoom(h, string(name))
		h.rooms[r.name] = r
		if h.relay != nil {
			r.loaded = h.relay.Watch(r.name)
		}
	}
	r.refs++
	loaded := r.loaded
	h.mu.Unlock()
	if loaded != nil {
		select {
		case <-loaded: // the usual case once the room's first member is in: no timer
		default:
			t := time.NewTimer(watchWait)
			select {
			case <-loaded:
			case <-t.C:
			}
			t.Stop()
		}
	}
	return r, nil
}

// watchWait bounds how long a client joining a room new on this node
// waits for the room's history from the cluster.
const watchWait = 2 * time.Second

// Release drops a hold on r taken by Acquire for a session that never
// started (Session.Leave releases the others).
func (h *Hub) Release(r *Room) { h.release(r) }

// release drops one session's hold on r, freeing r with the last one.
func (h *Hub) release(r *Room) {
	h.mu.Lock()
	r.refs--
	free := r.refs == 0
	if free {
		delete(h.rooms, r.name)
		if h.relay != nil {
			h.relay.Unwatch(r.name)
		}
	}
	h.mu.Unlock()
	if free {
		r.free()
	}
}

// Members returns the number of joined clients in all rooms.
func (h *Hub) Members() int { return int(h.members.Load()) }

// RoomCount returns the number of rooms.
func (h *Hub) RoomCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.rooms)
}

// HistorySize returns the number of messages kept in all rooms.
func (h *Hub) HistorySize() int { return int(h.history.Load()) }

// Rounds returns the number of completed broadcast rounds in all rooms.
func (h *Hub) Rounds() uint64 { return h.rounds.Load() }

// SetMaxRest changes the cap on the rest between rounds (default 25 ms);
// call it before any traffic. Benchmarks set 0 to measure the fan-out
// itself.
func (h *Hub) SetMaxRest(d time.Duration) { h.maxRest = d }

// Drain stops join and leave notices: the server is shutting down and
// every client here is about to get close 1001 instead. In a cluster the
// other nodes' members are told at once that this node's members left:
// one notice each, or one summary per room in a room too large for those.
func (h *Hub) Drain() {
	if h.draining.Swap(true) || h.relay == nil || !h.cfg.Presence {
		return
	}
	for _, r := range h.snapshot() {
		r.namesMu.Lock()
		names := make([]string, len(r.members))
		for i, s := range r.members {
			names[i] = s.name
		}
		r.namesMu.Unlock()
		switch {
		case len(names) == 0:
		case len(names) > h.cfg.PresenceSummary && len(names) >= 2:
			_ = h.relay.Publish(r.name, &Message{Kind: KindLeft, Count: len(names), Name: names[0], Name2: names[1]})
		default:
			for _, name := range names {
				_ = h.relay.Publish(r.name, &Message{Kind: KindLeft, Count: 1, Name: name})
			}
		}
	}
}

// Trim drops the broadcast buffers of every room that has no round in
// flight or due; the next message of such a room allocates them again.
// For a server gone quiet: buffers of rooms that spoke once are not kept.
func (h *Hub) Trim() {
	for _, r := range h.snapshot() {
		r.rounds.trim()
	}
}

// Idle reports whether no room has a round in flight or due.
func (h *Hub) Idle() bool {
	for _, r := range h.snapshot() {
		if !r.rounds.idle() {
			return false
		}
	}
	return true
}

func (h *Hub) snapshot() []*Room {
	h.mu.Lock()
	defer h.mu.Unlock()
	rooms := make([]*Room, 0, len(h.rooms))
	for _, r := range h.rooms {
		rooms = append(rooms, r)
	}
	return rooms
}

// RoomInfo is one room in a listing.
type RoomInfo struct {
	Name    string `json:"name"`
	Members int    `json:"members"`
}

// Rooms lists up to limit rooms by name, with the total number of rooms.
func (h *Hub) Rooms(limit int) (rooms []RoomInfo, total int) {
	all := h.snapshot()
	slices.SortFunc(all, func(a, b *Room) int { return strings.Compare(a.name, b.name) })
	for _, r := range all[:min(limit, len(all))] {
		rooms = append(rooms, RoomInfo{Name: r.name, Members: r.Members()})
	}
	return rooms, len(all)
}

// RoomMembers lists up to limit members of the room called name, sorted,
// with their total; ok is false if there is no such room.
func (h *Hub) RoomMembers(name string, limit int) (names []string, total int, ok bool) {
	h.mu.Lock()
	r := h.rooms[name]
	h.mu.Unlock()
	if r == nil {
		return nil, 0, false
	}
	r.namesMu.Lock()
	for _, s := range r.members {
		names = append(names, s.name)
	}
	r.namesMu.Unlock()
	slices.Sort(names)
	return names[:min(limit, len(names))], len(names), true
}

// Publish broadcasts a message from name to every member of the room
// called room, if it exists. It reads its arguments only during the call.
func (h *Hub) Publish(room, name string, content []byte) error {
	h.mu.Lock()
	r := h.rooms[room]
	h.mu.Unlock()
	if r == nil {
		return nil
	}
	return r.Publish(name, content)
}

// Deliver gives the members of room on this node a message the relay
// hands back: with the cluster's id for it, or id 0 for one the relay
// delivers locally while the cluster is out of reach (it then gets an id
// between the cluster's). ts is when the cluster took it (unix ms). A room
// with no members here is skipped. It reads m only during the call.
func (h *Hub) Deliver(room string, id uint64, ts int64, m *Message) error {
	r := h.room(room)
	if r == nil {
		return nil
	}
	return r.deliver(id, ts, m)
}

// Load adds a message the cluster ordered before this node watched room
// to the room's history (for replay and resume; nobody receives it live).
// Called by the relay while Acquire waits for the room.
func (h *Hub) Load(room string, id uint64, ts int64, m *Message) {
	if r := h.room(room); r != nil {
		r.rounds.load(id, ts, m)
	}
}

// Forget records that the cluster no longer keeps room's messages up to
// id: a client resuming from before it is told of the gap.
func (h *Hub) Forget(room string, id uint64) {
	if r := h.room(room); r != nil {
		r.rounds.forget(id)
	}
}

func (h *Hub) room(name string) *Room {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rooms[name]
}

// idSource issues message ids: increasing, never reused for another
// message in this process, and, being at least the wall clock in
// microseconds, not reused after a restart either (unless the previous
// run issued more than a million ids a second for longer than the
// restart took).
type idSource struct{ last atomic.Uint64 }

func (s *idSource) init() { s.last.Store(uint64(time.Now().UnixMicro())) }

func (s *idSource) next() uint64 {
	for {
		last := s.last.Load()
		id := max(last+1, uint64(time.Now().UnixMicro()))
		if s.last.CompareAndSwap(last, id) {
			return id
		}
	}
}

// Issued reports whether id may name a message: on one node, one no newer
// than the last id issued; in a cluster (whose ids this node learns only
// as they come) any.
func (h *Hub) Issued(id uint64) bool { return h.relay != nil || id <= h.ids.last.Load() }
