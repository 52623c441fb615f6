package chat

import (
	"bytes"
	"context"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"gochat/server/internal/chatmsg"
	"gochat/server/internal/wsframe"
)

// Session is one client's part in the chat: its name once joined, its
// member slot, and its rate and error budgets. The transport embeds one per
// connection (saving an allocation per client) and calls it only from the
// connection's own task, one call at a time: Init, OnMessage, Leave. Its
// fields belong to the chat layer; member is also written by other
// sessions' leaves, under the room's membersMu.
type Session struct {
	t    Transport
	room *Room // the room it is in, from Attach until Leave

	name     string // display name once joined
	keyHash  uint64 // hash of the uniqueness key (chatmsg.NameKey) once joined: see Room.names
	since    uint64 // the id it resumes after, if resume
	next     uint64 // sequence of the first message in its room it has not been given (rounds)
	tokensAt int64  // unix nanos of the last refill of tokens
	errsAt   int64  // unix nanos when the error window started

	id       int32   // the connection's id (its fd), in logs
	member   int32   // index in the room's members, -1 when not a member
	historyN int32   // messages to replay after the join
	tokens   float32 // rate limiter bucket
	errs     int32   // errors in the current error window
	v2       bool    // speaks gochat.v2: frames carry id, room and ts
	resume   bool    // replay everything after since
	joined   bool    // registered in the room
}

// Closes the chat layer asks for.
var (
	CloseBadJoin       = &wsframe.CloseCause{Code: ws.StatusPolicyViolation, Reason: "bad join", Label: "1008"}
	CloseTooManyErrors = &wsframe.CloseCause{Code: ws.StatusPolicyViolation, Reason: "too many errors", Label: "1008"}
)

// Init makes s a session speaking through t. id must not change while s
// is a member.
func (s *Session) Init(t Transport, id int32) {
	*s = Session{t: t, id: id, member: -1}
}

// Options are what a client asked for at the upgrade.
type Options struct {
	V2       bool   // the gochat.v2 subprotocol
	HistoryN int    // ?history=N
	Resume   bool   // ?since=ID was given
	Since    uint64 // ID
}

// Attach puts the session in room, acquired for it with Hub.Acquire, with
// the client's options. Until it joins it is in the room but not a member.
func (s *Session) Attach(room *Room, o Options) {
	s.room = room
	s.v2, s.historyN, s.resume, s.since = o.V2, int32(o.HistoryN), o.Resume, o.Since
}

// Joined reports whether the client has joined. Session task only.
func (s *Session) Joined() bool { return s.joined }

// Leave takes the client out of its room, with a leave notice unless the
// hub is draining, and lets the room go. Safe to call more than once; only
// the first counts.
func (s *Session) Leave() {
	r := s.room
	if r == nil {
		return
	}
	r.leave(s)
	s.room = nil
	r.hub.release(r)
}

// scratchBufs hold decoded message strings; a message needs one only while
// it is handled.
var scratchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// OnMessage handles one complete text message (valid UTF-8). arrived is
// when the transport first saw it readable (unix nanos): the rate limit
// counts from then, so time the message spent waiting for a busy server is
// never held against the client.
func (s *Session) OnMessage(p []byte, arrived int64) {
	s.room.hub.metrics.MessagesIn.Inc()
	sp := scratchBufs.Get().(*[]byte)
	m, scratch, err := chatmsg.Parse(p, *sp)
	if s.joined {
		s.chat(m, err, arrived)
	} else {
		s.join(m, err)
	}
	*sp = scratch[:0]
	scratchBufs.Put(sp)
}

// join handles the first message. A bad join gets an Error message, then 1008.
func (s *Session) join(m chatmsg.Message, err error) {
	h := s.room.hub
	var name string
	var kb [chatmsg.MaxNameKey]byte
	if err == nil && !m.HasUsername {
		err = chatmsg.ErrUsernameRequired
	}
	if err == nil {
		name, err = chatmsg.CheckUsername(m.Username)
	}
	key := chatmsg.AppendNameKey(kb[:0], name)
	if err == nil && h.relay != nil {
		err = h.relay.Claim(s.room.name, string(key), name)
	}
	if err == nil {
		err = s.room.join(s, name, keyHash(key))
	}
	if err != nil {
		h.metrics.JoinRejects.Inc()
		s.sendError(err)
		s.t.Close(CloseBadJoin)
		return
	}
	s.t.Joined()
	h.metrics.Joins.Inc()
	h.log.LogAttrs(context.Background(), slog.LevelDebug, "join", slog.Int("conn", int(s.id)))
	s.tokens, s.tokensAt = float32(h.cfg.Burst), time.Now().UnixNano()
	if len(bytes.TrimSpace(m.Content)) > 0 {
		if utf8.RuneCount(m.Content) > h.cfg.MaxContent {
			s.reject(chatmsg.ErrContentTooLong)
		} else {
			s.tokens--
			s.publish(m.Content)
		}
	}
	s.room.notice(name, joined)
}

// chat handles a message after the join. The username field is ignored: a
// client speaks only under the name it joined with.
func (s *Session) chat(m chatmsg.Message, err error, arrived int64) {
	switch {
	case err != nil:
		s.reject(err)
	case utf8.RuneCount(m.Content) > s.room.hub.cfg.MaxContent:
		s.reject(chatmsg.ErrContentTooLong)
	case !s.allow(arrived):
		// Checked before the whitespace rule: an ignored message is still a
		// message, and must not be free to repeat.
		s.room.hub.metrics.RateLimited.Inc()
		s.reject(chatmsg.ErrRateLimited)
	case len(bytes.TrimSpace(m.Content)) == 0:
		// Empty or whitespace-only content is ignored, as in the original.
	default:
		s.publish(m.Content)
	}
}

func (s *Session) publish(content []byte) {
	if err := s.room.Publish(s.name, content); err != nil {
		s.sendError(err)
	}
}

// allow takes a token from the client's bucket (Rate per second, Burst
// deep). The bucket may hold more than Burst by what the client could
// have earned while its message waited in the server (now - arrived): a
// stalled server must not turn an honest client's steady rate into a burst.
func (s *Session) allow(arrived int64) bool {
	cfg := &s.room.hub.cfg
	now := time.Now().UnixNano()
	waited := float64(max(now-arrived, 0)) / 1e9
	tokens := float64(s.tokens) + float64(now-s.tokensAt)/1e9*cfg.Rate
	s.tokens = float32(min(tokens, float64(cfg.Burst)+waited*cfg.Rate))
	s.tokensAt = now
	if s.tokens < 1 {
		return false
	}
	s.tokens--
	return true
}

// reject answers a bad message with an Error and charges the error budget;
// a client over budget is closed with 1008.
func (s *Session) reject(err error) {
	now := time.Now().UnixNano()
	if now-s.errsAt > int64(time.Minute) {
		s.errs, s.errsAt = 0, now
	}
	s.errs++
	s.sendError(err)
	if int(s.errs) > s.room.hub.cfg.ErrorBudget {
		s.room.hub.metrics.ErrorBudget.Inc()
		s.sendError(chatmsg.ErrTooManyErrors)
		s.t.Close(CloseTooManyErrors)
	}
}

// sendError sends a System "Error: ..." message to this client only.
func (s *Session) sendError(err error) {
	frame := errorFrames[err]
	if frame == nil {
		frame = errorFrames[chatmsg.ErrBadJSON]
	}
	s.t.Send(frame)
}

// errorFrames are the Error messages, framed once at start-up.
var errorFrames = func() map[error][]byte {
	m := map[error][]byte{}
	for _, err := range []error{
		chatmsg.ErrNotObject, chatmsg.ErrBadJSON, chatmsg.ErrWrongType, chatmsg.ErrUnknownField,
		chatmsg.ErrUsernameRequired, chatmsg.ErrUsernameLength, chatmsg.ErrUsernameChars,
		chatmsg.ErrUsernameReserved, chatmsg.ErrUsernameTaken, chatmsg.ErrContentTooLong,
		chatmsg.ErrRateLimited, chatmsg.ErrTooManyErrors, chatmsg.ErrServerBusy,
	} {
		m[err] = wsframe.AppendFrame(nil, ws.OpText, chatmsg.AppendChat(nil, chatmsg.SystemName, "Error: "+err.Error()))
	}
	return m
}()

// keySeed keeps the key hashes of Room.names unpredictable to clients.
var keySeed = maphash.MakeSeed()

func keyHash(key []byte) uint64 { return maphash.Bytes(keySeed, key) }
