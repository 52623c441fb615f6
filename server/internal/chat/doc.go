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
// through Deliver (relay.go). Nothing here knows about sockets or NATS.
//
// Lock order: Hub.mu alone; in a room, namesMu, then rounds.qmu, then
// membersMu. Transport.Send is called with namesMu and qmu held (the
// replay, so that it lands before any live batch); Transport.Deliver with
// no lock held. No Transport method takes a lock of this package.
// Relay.Watch and Relay.Unwatch are called with Hub.mu held and take only
// the relay's own leaf locks; every other Relay method is called with no
// lock of this package held, and the relay calls Hub.Deliver, Load and
// Forget with none of its locks held but its local-delivery lock.
package chat
