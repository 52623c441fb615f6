// Package chatmsg is gochat's chat message codec (SPEC §2): it decodes a
// client's JSON message without allocating, encodes server messages exactly
// as encoding/json would (so frames match the original gorilla chat byte for
// byte), checks usernames and derives the key that makes look-alike names
// one name, and names every error a client can be told. It is pure: no I/O,
// no state, safe for concurrent use.
package chatmsg
