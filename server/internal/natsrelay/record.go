package natsrelay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"unicode/utf8"

	"gochat/server/internal/chat"
	"gochat/server/internal/chatmsg"
)

// A record is one chat.Message as the stream keeps it:
//
//	version kind uvarint(n) uvarint(count) uvarint(len) name uvarint(len) name2 uvarint(len) content
//
// n numbers the records a node publishes in a room (1, 2, ...), so that a
// receiver counts exactly the messages of a node it missed.
//
// Presence changes carry names and a count, never text: every node words
// them itself, so nothing on the bus can make a node say a System text.
const (
	recordVersion = 3
	// maxRecord bounds a record (the stream refuses larger ones, and so
	// does the receiver): two names of 32 characters, content of the
	// largest -max-content a node may have, UTF-8, with the lengths.
	maxRecord = 64 << 10
	// maxCount bounds the members a presence change may be about.
	maxCount = 1 << 24
)

// errBadRecord is any record that is not what a gochat node publishes.
var errBadRecord = errors.New("natsrelay: malformed record")

// appendRecord appends m's record, the publisher's n-th in its room, to dst.
func appendRecord(dst []byte, m *chat.Message, n uint64) []byte {
	dst = append(dst, recordVersion, byte(m.Kind))
	dst = binary.AppendUvarint(dst, n)
	dst = binary.AppendUvarint(dst, uint64(m.Count))
	dst = binary.AppendUvarint(dst, uint64(len(m.Name)))
	dst = append(dst, m.Name...)
	dst = binary.AppendUvarint(dst, uint64(len(m.Name2)))
	dst = append(dst, m.Name2...)
	dst = binary.AppendUvarint(dst, uint64(len(m.Content)))
	return append(dst, m.Content...)
}

// parseRecord decodes b into m (whose Content then aliases b), returning
// the record's number in its publisher's room (n), and checks
// it as a node checks what its own clients send: a valid username that is
// not System (spelled any way) and that is already in its canonical form,
// content that is valid UTF-8, not blank and within maxContent characters,
// a count that fits the kind.
func parseRecord(b []byte, m *chat.Message, maxContent int) (n uint64, err error) {
	if len(b) < 2 || len(b) > maxRecord || b[0] != recordVersion {
		return 0, errBadRecord
	}
	*m = chat.Message{Kind: chat.Kind(b[1])}
	b = b[2:]
	n, k := uvarint(b)
	if k <= 0 || n == 0 {
		return 0, errBadRecord
	}
	b = b[k:]
	count, k := uvarint(b)
	if k <= 0 || count == 0 || count > maxCount {
		return 0, errBadRecord
	}
	m.Count, b = int(count), b[k:]
	var fields [3][]byte
	for i := range fields {
		l, k := uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return 0, errBadRecord
		}
		fields[i], b = b[k:k+int(l)], b[k+int(l):]
	}
	if len(b) != 0 {
		return 0, errBadRecord
	}
	name, name2, content := fields[0], fields[1], fields[2]
	if !validName(name) {
		return 0, errBadRecord
	}
	m.Name = string(name)
	switch m.Kind {
	case chat.KindChat:
		if m.Count != 1 || len(name2) != 0 || !utf8.Valid(content) ||
			len(bytes.TrimSpace(content)) == 0 || utf8.RuneCount(content) > maxContent {
			return 0, errBadRecord
		}
		m.Content = content
	case chat.KindJoined, chat.KindLeft:
		if len(content) != 0 || (m.Count >= 2) != (len(name2) != 0) || len(name2) != 0 && !validName(name2) {
			return 0, errBadRecord
		}
		m.Name2 = string(name2)
	default:
		return 0, errBadRecord
	}
	return n, nil
}

// uvarint reads a uvarint written the one way appendRecord writes it
// (minimal length); k <= 0 for anything else, so that a record has a
// single encoding.
func uvarint(b []byte) (v uint64, k int) {
	v, k = binary.Uvarint(b)
	if k > 0 && k != len(binary.AppendUvarint(nil, v)) {
		return 0, 0
	}
	return v, k
}

// validName reports whether b is a username a node would have accepted,
// exactly as it would have kept it.
func validName(b []byte) bool {
	name, err := chatmsg.CheckUsername(b)
	return err == nil && name == string(b)
}
