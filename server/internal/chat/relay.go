package chat

// Relay carries what this node's rooms accept to the other nodes of a
// cluster. The hub owns it: a single node has none (nil), and the hub never
// knows which bus is behind it. What other nodes publish comes back in
// through Hub.PublishRemote.
type Relay interface {
	// Publish queues one accepted message or notice of room for the other
	// nodes. It must not block and may keep no argument after it returns.
	// Safe for concurrent use.
	Publish(room, name string, content []byte)
}
