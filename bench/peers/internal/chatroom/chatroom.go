// Package chatroom is the room the gws and nbio peers share: the joined
// members, the unique names, and the protocol's per-connection flow (the
// first message joins, later ones chat; join and leave notices). Each
// peer keeps its transport: how a member is rejected, told of an error,
// and how a message fans out to the members.
package chatroom

import (
	"sync"
	"time"

	"gochat/bench/peers/chat"
)

// Member is the protocol state of one connection; a peer's member type
// embeds it.
type Member struct {
	Name   string
	joined bool
	idx    int // position in Room.members while joined
}

// State returns m; through it the room reaches a peer member's Member.
func (m *Member) State() *Member { return m }

// Conn is a peer's member: its embedded Member (State) and its transport.
type Conn interface {
	State() *Member
	// Reject sends the error text of a refused join and closes.
	Reject(errText string)
	// SetReadDeadline sets the connection's read deadline; the zero time
	// lifts the join deadline once the member joined.
	SetReadDeadline(t time.Time) error
	// SendError sends the error text of a refused chat message.
	SendError(errText string)
}

// Room is a chat room of C members. Fan-out is the peer's: send gets
// the members, under the room's read lock, and one encoded message.
type Room[C Conn] struct {
	presence bool
	names    chat.Names
	mu       sync.RWMutex
	members  []C
	send     func(members []C, payload []byte)
}

// New returns a room, with join and leave notices if presence.
func New[C Conn](presence bool, send func(members []C, payload []byte)) *Room[C] {
	return &Room[C]{presence: presence, send: send}
}

func (r *Room[C]) add(c C) {
	r.mu.Lock()
	c.State().idx = len(r.members)
	r.members = append(r.members, c)
	r.mu.Unlock()
}

func (r *Room[C]) remove(c C) {
	r.mu.Lock()
	i := c.State().idx
	last := r.members[len(r.members)-1]
	r.members[i] = last
	last.State().idx = i
	r.members = r.members[:len(r.members)-1]
	r.mu.Unlock()
}

// Publish sends payload to every member.
func (r *Room[C]) Publish(payload []byte) {
	r.mu.RLock()
	r.send(r.members, payload)
	r.mu.RUnlock()
}

// Message handles a message from c: the join while c has not joined,
// then chat.
func (r *Room[C]) Message(c C, data []byte) {
	m := c.State()
	if !m.joined {
		name, content, bad := chat.Join(data)
		if bad == "" && !r.names.Claim(name) {
			bad = "Username is already taken"
		}
		if bad != "" {
			c.Reject(bad)
			return
		}
		c.SetReadDeadline(time.Time{})
		m.Name, m.joined = name, true
		r.add(c)
		if content != "" {
			r.Publish(chat.Encode(name, content))
		}
		if r.presence {
			r.Publish(chat.Joined(name))
		}
		return
	}
	content, bad := chat.Chat(data)
	switch {
	case bad != "":
		c.SendError(bad)
	case content != "":
		r.Publish(chat.Encode(m.Name, content))
	}
}

// Close handles c's disconnect: if it had joined, it leaves.
func (r *Room[C]) Close(c C) {
	m := c.State()
	if !m.joined {
		return
	}
	r.remove(c)
	r.names.Release(m.Name)
	if r.presence {
		r.Publish(chat.Left(m.Name))
	}
}
