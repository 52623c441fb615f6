package chat

import "gochat/server/internal/wsframe"

// Transport is a session's connection, as the chat layer sees it. The
// server's Conn implements it.
type Transport interface {
	// Deliver hands broadcast frames (complete frames from the room's
	// queue, shared and read-only: not kept after the call) to the
	// connection without waiting on the peer. It reports whether they were
	// accepted and how many bytes went to the kernel now. Called by the
	// hub's fan-out tasks.
	Deliver(batch []byte) (ok bool, written int)
	// Send queues one frame for this client only. Called by the session's
	// own task.
	Send(frame []byte)
	// Close starts closing the connection with cause. Called by the
	// session's own task.
	Close(cause *wsframe.CloseCause)
	// Joined tells the transport the session has joined, which ends its
	// join deadline. Called by the session's own task.
	Joined()
}
