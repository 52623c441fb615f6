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
