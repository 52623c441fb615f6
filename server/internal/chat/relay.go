package chat

// Relay joins this node's rooms to the same rooms on the other nodes of a
// cluster (SPEC §9). The hub owns it: a single node has none (nil), and the
// hub never knows which bus is behind it.
//
// With a relay, the cluster orders each room: what a member says or a
// presence change is handed to Publish and reaches this node's members,
// like every other node's, when the relay hands it back through
// Hub.Deliver with its cluster-wide id. While the cluster cannot be
// reached, the relay delivers locally at once (Hub.Deliver with id 0) and
// sends later; the hub never delivers a member's message by itself.
type Relay interface {
	// Watch starts receiving the room called name: it has sessions on this
	// node now. The relay loads the room's recent history into the hub
	// (Hub.Load) and then delivers its messages. The returned channel is
	// closed once the history is loaded; nil if there is nothing to wait
	// for. Must not block: the hub calls it with its lock held.
	Watch(name string) <-chan struct{}
	// Unwatch stops receiving the room: its last session here left. Must
	// not block: the hub calls it with its lock held, so a Watch of a
	// recreated room always comes after the Unwatch of the freed one.
	Unwatch(name string)
	// Publish hands one accepted message of room to the cluster, or fails
	// (the sender is told; nothing was sent). It reads m only during the
	// call. Safe for concurrent use; a sender's messages must be published
	// in order.
	Publish(room string, m *Message) error
	// Claim takes name, whose uniqueness key is key, for a member joining
	// room here: chatmsg.ErrUsernameTaken if a member elsewhere in the
	// cluster has it. May wait on the cluster, boundedly; called without
	// the hub's locks.
	Claim(room, key, name string) error
	// Release gives the name back: the member left. Must not block.
	Release(room, key string)
}

// Kind is what a Message is.
type Kind uint8

const (
	KindChat   Kind = 1 // Name said Content
	KindJoined Kind = 2 // Count members joined, the first two Name and Name2
	KindLeft   Kind = 3 // Count members left, the first two Name and Name2
)

// Message is what the cluster carries: a chat message, or a presence
// change that each node words itself (a bus can never carry a System
// text of its own).
type Message struct {
	Kind    Kind
	Count   int    // members a presence change is about (≥ 1); 1 for chat
	Name    string // the sender, or the first member named
	Name2   string // the second member named, if Count ≥ 2
	Content []byte // chat only
}
