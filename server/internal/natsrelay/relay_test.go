package natsrelay

import (
	"bytes"
	"testing"
)

func TestRecordsRoundTripAndMalformedAreRefused(t *testing.T) {
	var b []byte
	b = appendRecord(b, "lobby", "alice", []byte("hi"))
	b = appendRecord(b, "r2", "System", []byte("bob joined the chat"))
	if n := recordLen(b); n != len(appendRecord(nil, "lobby", "alice", []byte("hi"))) {
		t.Fatalf("recordLen %d", n)
	}
	room, name, content, rest, ok := readRecord(b)
	if !ok || string(room) != "lobby" || string(name) != "alice" || string(content) != "hi" {
		t.Fatalf("first record: %q %q %q %v", room, name, content, ok)
	}
	room, name, content, rest, ok = readRecord(rest)
	if !ok || string(room) != "r2" || string(name) != "System" || !bytes.Equal(content, []byte("bob joined the chat")) || len(rest) != 0 {
		t.Fatalf("second record: %q %q %q %v rest %d", room, name, content, ok, len(rest))
	}
	for cut := 1; cut < len(b)/2; cut++ {
		if _, _, _, _, ok := readRecord(b[:cut]); ok && cut < recordLen(b) {
			t.Fatalf("truncated record of %d bytes accepted", cut)
		}
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
