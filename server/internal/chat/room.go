package chat

import (
	"context"
	"log/slog"
	"sync"
	"unsafe"

	"gochat/server/internal/chatmsg"
)

// Room is one chat: its members, their names, its broadcast rounds and its
// history. Chat, notices, presence and slow-consumer handling are per room;
// nothing crosses to another room.
type Room struct {
	hub    *Hub
	name   string
	refs   int             // sessions holding the room; protected by Hub.mu
	loaded <-chan struct{} // in a cluster: closed once the history is loaded (Relay.Watch)

	// namesMu protects names, and serializes joins and leaves: members
	// changes only with it held (and membersMu, for the rounds' readers).
	namesMu sync.Mutex
	// names maps the hashes of members' uniqueness keys to the members
	// once the room has had more than smallRoom of them; a smaller room
	// scans members instead, and saves the map. A hash, not the key: a
	// key string per member would cost an object and a wider map slot.
	// Two different keys share a hash with probability 2⁻⁶⁴ (the seed is
	// random per process, so a client cannot aim for it); the second name
	// is then refused as taken, never let in twice.
	names map[uint64]*Session

	membersMu sync.Mutex // Protects members, and Session.member of each of them.
	members   []*Session

	rounds rounds
}

func newRoom(h *Hub, name string) *Room {
	r := &Room{hub: h, name: name}
	r.rounds.init(r)
	return r
}

// free gives back what the emptied room held: its history. A round may
// still be due (a timer, or a summary of the last leaves): it finds the
// room freed and delivers to nobody.
func (r *Room) free() {
	rd := &r.rounds
	rd.qmu.Lock()
	rd.freed = true
	r.hub.history.Add(-int64(rd.history.n))
	rd.history.entries, rd.history.n, rd.history.start = nil, 0, 0
	rd.summaries = nil
	rd.qmu.Unlock()
}

// Name is the room's name.
func (r *Room) Name() string { return r.name }

// Members returns the number of clients joined to the room.
func (r *Room) Members() int {
	r.namesMu.Lock()
	defer r.namesMu.Unlock()
	return len(r.members)
}

// Publish broadcasts a message from name (a member, or System) to every
// member of the room, the sender included; in a cluster, through the
// relay, to the room's members on every node. It reads name and content
// only during the call.
func (r *Room) Publish(name string, content []byte) error {
	if relay := r.hub.relay; relay != nil {
		return relay.Publish(r.name, &Message{Kind: KindChat, Count: 1, Name: name, Content: content})
	}
	return r.rounds.enqueue(0, 0, name, unsafeString(content))
}

// deliver queues what the relay hands back for the members here: chat
// as it is; a presence change worded here, summarized in a large room
// like local ones are.
func (r *Room) deliver(id uint64, ts int64, m *Message) error {
	if m.Kind != KindChat {
		members := r.Members()
		if r.noNotices(members) {
			return nil
		}
		if members > r.hub.cfg.PresenceSummary {
			names := [2]string{m.Name, m.Name2}
			r.rounds.pendNotice(noticeOf(m.Kind), m.Count, names[:min(m.Count, 2)]...)
			return nil
		}
	}
	name, content := r.words(m)
	return r.rounds.enqueue(id, ts, name, content)
}

// words returns the sender and text of m as members see them.
func (r *Room) words(m *Message) (name, content string) {
	switch m.Kind {
	case KindJoined, KindLeft:
		sm := summary{names: [2]string{m.Name, m.Name2}, n: m.Count}
		return chatmsg.SystemName, summaryText(&sm, noticeOf(m.Kind))
	}
	return m.Name, unsafeString(m.Content)
}

// join registers s under name if no member of the room has its key, and
// queues its replay (history or resume) to it in the same step, so that
// what it replays and what it then receives live neither overlap nor
// leave a hole. Called by s's task.
func (r *Room) join(s *Session, name string, key uint64) error {
	r.namesMu.Lock()
	defer r.namesMu.Unlock()
	if r.takenLocked(key) {
		return chatmsg.ErrUsernameTaken
	}
	if r.names == nil && len(r.members) >= smallRoom {
		r.names = make(map[uint64]*Session, 2*smallRoom)
		for _, m := range r.members {
			r.names[m.keyHash] = m
		}
	}
	if r.names != nil {
		r.names[key] = s
	}
	s.name, s.keyHash, s.joined = name, key, true
	r.rounds.attach(s)
	r.hub.members.Add(1)
	return nil
}

// smallRoom is the member count up to which a room finds names by
// scanning its members rather than through a map.
const smallRoom = 32

// takenLocked reports whether a member has key. Caller holds namesMu.
func (r *Room) takenLocked(key uint64) bool {
	if r.names != nil {
		_, taken := r.names[key]
		return taken
	}
	for _, m := range r.members {
		if m.keyHash == key {
			return true
		}
	}
	return false
}

// leave unregisters s and, unless the hub is draining, tells the others.
// Called by s's task; does nothing if s is not a member, so a session
// leaves exactly once.
func (r *Room) leave(s *Session) {
	if !s.joined {
		return
	}
	s.joined = false
	r.namesMu.Lock()
	if r.names != nil {
		delete(r.names, s.keyHash)
	}
	r.membersMu.Lock()
	last := len(r.members) - 1
	moved := r.members[last]
	r.members[s.member] = moved
	moved.member = s.member
	r.members[last] = nil
	r.members = r.members[:last]
	s.member = -1
	r.membersMu.Unlock()
	r.namesMu.Unlock()
	if relay := r.hub.relay; relay != nil {
		relay.Release(r.name, chatmsg.NameKey(s.name))
	}
	r.hub.members.Add(-1)
	r.hub.metrics.Leaves.Inc()
	r.hub.log.LogAttrs(context.Background(), slog.LevelDebug, "leave", slog.Int("conn", int(s.id)))
	r.notice(s.name, left)
}

// notice tells every member that name joined or left: one notice per
// client in a small room, a per-round summary in a large one (or when the
// broadcast queue is full: a notice is never dropped), none at all above
// PresenceMax, and none while draining.
func (r *Room) notice(name string, kind noticeKind) {
	cfg := &r.hub.cfg
	members := r.Members()
	if r.noNotices(members) {
		return
	}
	if relay := r.hub.relay; relay != nil {
		m := Message{Kind: kind.message(), Count: 1, Name: name}
		if relay.Publish(r.name, &m) != nil {
			r.rounds.pendNotice(kind, 1, name) // the others will not hear of it: at least the members here do
		}
		return
	}
	if members <= cfg.PresenceSummary {
		var b [chatmsg.MaxUsername*4 + 32]byte
		content := append(append(b[:0], name...), noticeText[kind]...)
		if r.Publish(chatmsg.SystemName, content) == nil {
			return
		}
	}
	r.rounds.pendNotice(kind, 1, name)
}

// noNotices reports whether the room, with members in it, sends no join
// or leave notices now: presence off, above -presence-max, or draining
// (every member here is about to get 1001 instead).
func (r *Room) noNotices(members int) bool {
	cfg := &r.hub.cfg
	return !cfg.Presence || r.hub.draining.Load() || cfg.PresenceMax > 0 && members > cfg.PresenceMax
}

// unsafeString views b as a string for the length of a call that only
// reads it.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
