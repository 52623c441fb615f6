package chat

import (
	"bytes"
	"strings"
	"testing"
	"unsafe"

	"github.com/gobwas/ws"

	"gochat/server/internal/chatmsg"
	"gochat/server/internal/wsframe"
)

// A kept message's gochat.v2 frame, made from its seed frame, is byte for
// byte the frame encoded from its fields, at every header length.
func TestEntryV2FrameIsTheEncodedOne(t *testing.T) {
	for _, content := range []string{"", "hi", `<"quoted">&` + "\u2028\n", strings.Repeat("é", 60), strings.Repeat("x", 300), strings.Repeat("y", 70000)} {
		e := entry{id: 42_000_017, ts: 1_764_000_000_123}
		e.seed = wsframe.AppendFramed(nil, ws.OpText, func(b []byte) []byte { return chatmsg.AppendChat(b, "alice", content) })
		want := wsframe.AppendFramed(nil, ws.OpText, func(b []byte) []byte {
			return chatmsg.AppendChatV2(b, "alice", content, e.id, "dev.ops", e.ts)
		})
		if got := e.appendV2([]byte("before"), "dev.ops"); !bytes.Equal(got, append([]byte("before"), want...)) {
			t.Fatalf("content of %d bytes: v2 frame\n%q\nwant\n%q", len(content), got[:min(len(got), 80)], want[:min(len(want), 80)])
		}
	}
}

// Every room costs one Room: a field that pushes it past the 256-byte size
// class costs 64 bytes per room, as much as 6 bytes per client in rooms of
// ten.
func TestRoomFitsItsSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(Room{}); n > 256 {
		t.Fatalf("Room is %d bytes: over the 256-byte size class", n)
	}
}

// A member is given whole frames up to the round's byte limit, always at
// least one, and the rest on its next visit.
func TestSegmentTakesWholeFramesUpToTheLimit(t *testing.T) {
	h := testHub(t)
	r, err := h.Acquire([]byte("limits"))
	if err != nil {
		t.Fatal(err)
	}
	rd := &r.rounds
	var sizes []int // seed frame sizes
	rd.qmu.Lock()
	for _, n := range []int{10, 10, 200, 10} {
		before := 0
		if rd.bufs != nil {
			before = len(rd.bufs.queue)
		}
		rd.enqueueLocked(0, 0, "", strings.Repeat("x", n))
		sizes = append(sizes, len(rd.bufs.queue)-before)
	}
	rd.qmu.Unlock()
	total := 0
	for _, n := range sizes {
		total += n
	}
	for _, tc := range []struct {
		limit, bytes int
		next         uint64
	}{
		{1, sizes[0], 1}, // always at least one frame
		{sizes[0], sizes[0], 1},
		{sizes[0] + sizes[1], sizes[0] + sizes[1], 2},
		{sizes[0] + sizes[1] + sizes[2] - 1, sizes[0] + sizes[1], 2},
		{total - sizes[3], total - sizes[3], 3},
		{0, total, 4}, // no limit
	} {
		s := &Session{next: rd.base}
		seg, next := rd.segment(s, tc.limit)
		if len(seg) != tc.bytes || next != rd.base+tc.next {
			t.Errorf("limit %d: %d bytes up to %d, want %d bytes up to %d", tc.limit, len(seg), next-rd.base, tc.bytes, tc.next)
		}
	}
	if seg, _ := rd.segment(&Session{next: rd.base + 4}, 0); seg != nil {
		t.Errorf("a member given everything got %d bytes", len(seg))
	}
}
