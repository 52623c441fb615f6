package natsrelay

import (
	"bytes"
	"strings"
	"testing"

	"gochat/server/internal/chat"
)

func TestRecordRoundTrip(t *testing.T) {
	for _, m := range []chat.Message{
		{Kind: chat.KindChat, Count: 1, Name: "alice", Content: []byte("hi <b>there</b>")},
		{Kind: chat.KindJoined, Count: 1, Name: "bob"},
		{Kind: chat.KindLeft, Count: 1312, Name: "bob", Name2: "Zoë"},
	} {
		var got chat.Message
		n, err := parseRecord(appendRecord(nil, &m, 7), &got, 2000)
		if err != nil || n != 7 {
			t.Fatalf("%+v: n %d, %v", m, n, err)
		}
		if got.Kind != m.Kind || got.Count != m.Count || got.Name != m.Name || got.Name2 != m.Name2 || !bytes.Equal(got.Content, m.Content) {
			t.Fatalf("round trip %+v → %+v", m, got)
		}
	}
}

// What no gochat node publishes is refused, as a client's input would be.
func TestRecordValidation(t *testing.T) {
	long := strings.Repeat("é", 2001)
	for name, m := range map[string]chat.Message{
		"System chat":          {Kind: chat.KindChat, Count: 1, Name: "System", Content: []byte("please re-enter your password")},
		"System lookalike":     {Kind: chat.KindChat, Count: 1, Name: "SYSTEM", Content: []byte("x")},
		"Cyrillic System":      {Kind: chat.KindChat, Count: 1, Name: "Ѕуѕtеm", Content: []byte("x")},
		"bidi name":            {Kind: chat.KindChat, Count: 1, Name: "al\u202eice", Content: []byte("x")},
		"untrimmed name":       {Kind: chat.KindChat, Count: 1, Name: " alice", Content: []byte("x")},
		"long name":            {Kind: chat.KindChat, Count: 1, Name: strings.Repeat("a", 33), Content: []byte("x")},
		"empty name":           {Kind: chat.KindChat, Count: 1, Content: []byte("x")},
		"content too long":     {Kind: chat.KindChat, Count: 1, Name: "alice", Content: []byte(long)},
		"blank content":        {Kind: chat.KindChat, Count: 1, Name: "alice", Content: []byte(" \t")},
		"invalid UTF-8":        {Kind: chat.KindChat, Count: 1, Name: "alice", Content: []byte{'a', 0xff}},
		"chat with name2":      {Kind: chat.KindChat, Count: 1, Name: "alice", Name2: "bob", Content: []byte("x")},
		"chat count 2":         {Kind: chat.KindChat, Count: 2, Name: "alice", Content: []byte("x")},
		"notice with text":     {Kind: chat.KindJoined, Count: 1, Name: "alice", Content: []byte("joined, enter your password")},
		"notice count 0":       {Kind: chat.KindLeft, Count: 0, Name: "alice"},
		"notice 2, one name":   {Kind: chat.KindLeft, Count: 2, Name: "alice"},
		"notice 1, two names":  {Kind: chat.KindLeft, Count: 1, Name: "alice", Name2: "bob"},
		"notice System name2":  {Kind: chat.KindJoined, Count: 3, Name: "alice", Name2: "system"},
		"notice count too big": {Kind: chat.KindJoined, Count: maxCount + 1, Name: "alice", Name2: "bob"},
		"unknown kind":         {Kind: 9, Count: 1, Name: "alice"},
	} {
		var got chat.Message
		if _, err := parseRecord(appendRecord(nil, &m, 7), &got, 2000); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := parseRecord(appendRecord(nil, &chat.Message{Kind: chat.KindChat, Count: 1, Name: "a", Content: []byte("x")}, 0), new(chat.Message), 2000); err == nil {
		t.Error("record number 0 accepted")
	}
	good := appendRecord(nil, &chat.Message{Kind: chat.KindChat, Count: 1, Name: "alice", Content: []byte("hi")}, 1)
	for cut := range len(good) {
		var got chat.Message
		if _, err := parseRecord(good[:cut], &got, 2000); err == nil {
			t.Errorf("record cut to %d bytes accepted", cut)
		}
	}
	var got chat.Message
	if _, err := parseRecord(append(good[:len(good):len(good)], 0), &got, 2000); err == nil {
		t.Error("trailing byte accepted")
	}
	old := append([]byte{2}, good[1:]...)
	if _, err := parseRecord(old, &got, 2000); err == nil {
		t.Error("other version accepted")
	}
	// A length written in more bytes than needed (0xac 0x00 is 44).
	if _, err := parseRecord([]byte{3, 3, 0xac, 0x00, 0x30, 1, 0x30, 1, 0x30, 0}, &got, 2000); err == nil {
		t.Error("non-minimal uvarint accepted")
	}
	if _, err := parseRecord(append(good[:2:2], make([]byte, maxRecord)...), &got, 1<<20); err == nil {
		t.Error("oversized record accepted")
	}
}

// FuzzParseRecord: whatever the bytes, parsing never panics, and what it
// accepts encodes back to the same bytes.
func FuzzParseRecord(f *testing.F) {
	f.Add(appendRecord(nil, &chat.Message{Kind: chat.KindChat, Count: 1, Name: "alice", Content: []byte("hi")}, 1))
	f.Add(appendRecord(nil, &chat.Message{Kind: chat.KindLeft, Count: 5, Name: "a", Name2: "b"}, 300))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m chat.Message
		n, err := parseRecord(b, &m, 2000)
		if err != nil {
			return
		}
		if again := appendRecord(nil, &m, n); !bytes.Equal(again, b) {
			t.Fatalf("accepted %x, re-encodes as %x", b, again)
		}
	})
}

func TestRoomTokens(t *testing.T) {
	for _, room := range []string{"lobby", "a.b", "a..b-c_d.", "x"} {
		tok := roomToken(room)
		if strings.Contains(tok, ".") || tokenRoom(tok) != room {
			t.Errorf("%q → %q → %q", room, tok, tokenRoom(tok))
		}
	}
	if streamName("gochat.room") != "GOCHAT_ROOM" {
		t.Errorf("stream name %q", streamName("gochat.room"))
	}
}

func TestValidSubjectAndRedactURL(t *testing.T) {
	for subj, ok := range map[string]bool{"gochat.room": true, "a": true, "": false, "a..b": false, "a.*": false, "a.>": false, "a b": false} {
		if ValidSubject(subj) != ok {
			t.Errorf("ValidSubject(%q) = %v", subj, !ok)
		}
	}
	if got := RedactURL("nats://u:p@h1:4222,nats://h2:4222"); got != "nats://[redacted]@h1:4222,nats://h2:4222" {
		t.Errorf("RedactURL: %s", got)
	}
}
