package chat

import (
	"strconv"
	"time"

	"gochat/server/internal/chatmsg"
)

// noticeKind is a presence notice: a join or a leave.
type noticeKind int

const (
	joined noticeKind = iota
	left
)

var noticeText = [...]string{joined: " joined the chat", left: " left the chat"}

// message is the relay's Kind of a notice.
func (k noticeKind) message() Kind {
	if k == left {
		return KindLeft
	}
	return KindJoined
}

// noticeOf is the notice of a presence Message.
func noticeOf(k Kind) noticeKind {
	if k == KindLeft {
		return left
	}
	return joined
}

// summary is the joins or leaves of one kind waiting for the next round in
// a large chat: the first two names and how many there are in all.
type summary struct {
	names [2]string
	n     int
}

// pendNotice adds count joins or leaves (the first two named) to the next
// round's summary and makes sure a round is due.
func (r *rounds) pendNotice(kind noticeKind, count int, names ...string) {
	r.qmu.Lock()
	if r.freed {
		r.qmu.Unlock()
		return
	}
	if r.emptyLocked() {
		r.queuedAt = time.Now().UnixNano()
	}
	if r.summaries == nil {
		r.summaries = new([2]summary)
	}
	sm := &r.summaries[kind]
	for i, name := range names {
		if sm.n+i < len(sm.names) {
			sm.names[sm.n+i] = name
		}
	}
	sm.n += count
	r.kickLocked()
}

// appendSummariesLocked queues the pending summaries ("alice joined the
// chat", "alice and bob joined the chat", "alice, bob and 1,312 others
// joined the chat") as ordinary notices and clears them. In a cluster,
// each node summarizes the presence changes it receives for its own
// members (they are not relayed again). Caller holds qmu.
func (r *rounds) appendSummariesLocked() {
	if r.summaries == nil {
		return
	}
	for kind := range r.summaries {
		sm := &r.summaries[kind]
		if sm.n == 0 {
			continue
		}
		r.enqueueLocked(0, 0, chatmsg.SystemName, summaryText(sm, noticeKind(kind)))
		*sm = summary{}
	}
}

func summaryText(sm *summary, kind noticeKind) string {
	switch sm.n {
	case 1:
		return sm.names[0] + noticeText[kind]
	case 2:
		return sm.names[0] + " and " + sm.names[1] + noticeText[kind]
	case 3:
		return sm.names[0] + ", " + sm.names[1] + " and 1 other" + noticeText[kind]
	}
	return sm.names[0] + ", " + sm.names[1] + " and " + groupThousands(sm.n-2) + " others" + noticeText[kind]
}

// groupThousands writes n with thousands separators: 1312 → "1,312".
func groupThousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
