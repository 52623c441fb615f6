// Package chat is gochat's application layer: who is in the chat, what a
// client may say (SPEC §2), and the broadcast pipeline that encodes each
// message once and hands the frames to every member's connection.
//
// It sits between the transport (package server: sockets, frames, the
// reactor) and the optional relay to other nodes. The transport creates one
// Session per WebSocket connection and gives it each complete text message;
// the session speaks back only through the small Transport interface
// (deliver a batch, send a frame, close with a cause). The hub hands what it
// accepts to a Relay, if there is one, and takes what other nodes publish
// through PublishRemote. Nothing here knows about sockets or NATS.
//
// Lock order: Hub.namesMu, then shard.mu. Hub.qmu is never held with
// another lock of this package; Transport methods are never called with
// namesMu or qmu held.
package chat
