package chat

import (
	"time"

	"github.com/gobwas/ws"

	"gochat/server/internal/chatmsg"
	"gochat/server/internal/wsframe"
)

// history is a room's last messages, chat and notices, in both wire forms:
// a ring of at most Config.History entries whose buffers are reused, so
// keeping history allocates nothing per message once the ring is full.
// Guarded by the room's rounds.qmu.
type history struct {
	hub     *Hub
	entries []entry // the ring; grows up to Config.History
	start   int32   // oldest entry
	n       int32   // entries in use
	// floor is the newest id the room no longer has: dropped from the ring,
	// or issued before the room existed. A client resuming from an id below
	// it has missed messages.
	floor uint64
}

// entry is one kept message. Only its seed frame is kept: the gochat.v2
// frame is the same object with id, room and ts added (appendV2), made
// when one is needed, so history costs one frame per message, not two.
type entry struct {
	id   uint64
	at   int64  // unix nanos it was kept at (HistoryAge)
	ts   int64  // its time in gochat.v2 frames (unix ms)
	seed []byte // its frame in the seed's form
}

// appendV2 appends the entry's gochat.v2 frame in room to dst.
func (e *entry) appendV2(dst []byte, room string) []byte {
	obj := wsframe.Payload(e.seed)
	return wsframe.AppendFramed(dst, ws.OpText, func(b []byte) []byte {
		return chatmsg.AppendV2Fields(append(b, obj[:len(obj)-1]...), e.id, room, e.ts)
	})
}

func (hs *history) init(h *Hub) {
	*hs = history{hub: h, floor: h.ids.last.Load()}
	if h.relay != nil {
		hs.floor = 0 // the relay tells what the cluster forgot (Hub.Load, Hub.Forget)
	}
}

// push makes room for message id, kept at unix nanos now, and returns its
// entry to fill, or nil if the room keeps no history.
func (hs *history) push(id uint64, now int64) *entry {
	limit := hs.hub.cfg.History
	if limit <= 0 {
		return nil
	}
	hs.trim(now)
	start, n := int(hs.start), int(hs.n)
	if n == limit {
		hs.floor = hs.entries[start].id
		start, n = (start+1)%limit, n-1
		hs.hub.history.Add(-1)
	}
	i := (start + n) % limit
	if i == len(hs.entries) {
		hs.entries = append(hs.entries, entry{})
	}
	hs.start, hs.n = int32(start), int32(n+1)
	hs.hub.history.Add(1)
	e := &hs.entries[i]
	e.id, e.at = id, now
	return e
}

// trim drops entries older than HistoryAge at unix nanos now.
func (hs *history) trim(now int64) {
	age := hs.hub.cfg.HistoryAge
	if age <= 0 {
		return
	}
	for hs.n > 0 && now-hs.entries[hs.start].at > int64(age) {
		hs.floor = hs.entries[hs.start].id
		hs.start = int32((int(hs.start) + 1) % len(hs.entries))
		hs.n--
		hs.hub.history.Add(-1)
	}
}

// replay returns the frames a joining session asked for, in its form, of
// the messages up to upTo (newer ones reach it live): everything after
// its resume id, preceded by a gap notice if the history no longer reaches
// back to that id; or else its last HistoryN messages.
func (hs *history) replay(s *Session, upTo uint64) []byte {
	if !s.resume && s.historyN == 0 {
		return nil
	}
	hs.trim(time.Now().UnixNano())
	var out []byte
	m := hs.hub.metrics
	if s.resume && s.since < hs.floor {
		m.Gaps.Inc()
		out = wsframe.AppendFramed(out, ws.OpText, func(b []byte) []byte {
			return chatmsg.AppendGap(b, s.room.name, s.since)
		})
	}
	// The kept entries newer than since (or the last historyN), up to upTo.
	start, n := int(hs.start), int(hs.n)
	first, last := n, n
	for i := n - 1; i >= 0; i-- {
		e := &hs.entries[(start+i)%len(hs.entries)]
		if e.id > upTo {
			last = i
			continue
		}
		if s.resume {
			if e.id <= s.since {
				break
			}
		} else if last-i > int(s.historyN) {
			break
		}
		first = i
	}
	for i := first; i < last; i++ {
		e := &hs.entries[(start+i)%len(hs.entries)]
		if s.v2 {
			out = e.appendV2(out, s.room.name)
		} else {
			out = append(out, e.seed...)
		}
	}
	if n := last - first; n > 0 {
		m.Replayed.Add(float64(n))
	}
	return out
}
