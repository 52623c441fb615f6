package chatmsg

import (
	"strconv"
	"unicode/utf8"
)

// AppendChat appends the server message {"username":u,"content":c} to dst,
// escaped exactly as encoding/json (with HTML escaping) encodes it, so the
// frames are byte-for-byte those of the original gorilla chat.
func AppendChat(dst []byte, username, content string) []byte {
	dst = append(dst, `{"username":`...)
	dst = AppendJSONString(dst, username)
	dst = append(dst, `,"content":`...)
	dst = AppendJSONString(dst, content)
	return append(dst, '}')
}

const hexDigits = "0123456789abcdef"

func AppendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// AppendChatV2 appends the gochat.v2 form of a server message: the seed's
// two keys, unchanged, then the message id, its room and its time (unix
// milliseconds): {"username":u,"content":c,"id":1,"room":"r","ts":2}.
func AppendChatV2(dst []byte, username, content string, id uint64, room string, ts int64) []byte {
	dst = AppendChat(dst, username, content)
	return AppendV2Fields(dst[:len(dst)-1], id, room, ts) // reopen the object
}

// AppendV2Fields appends what gochat.v2 adds to a seed message, and the
// closing brace, to dst: a seed message with its brace removed.
func AppendV2Fields(dst []byte, id uint64, room string, ts int64) []byte {
	dst = append(dst, `,"id":`...)
	dst = strconv.AppendUint(dst, id, 10)
	dst = append(dst, `,"room":`...)
	dst = AppendJSONString(dst, room)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, ts, 10)
	return append(dst, '}')
}

// GapText is the content of the one frame that tells a resuming gochat.v2
// client that history no longer reaches back to the id it resumed from.
const GapText = "Some messages were missed: history does not reach back that far"

// AppendGap appends the gap notice for room: a System message with
// "gap":true and, as "since", the id the client asked to resume from.
func AppendGap(dst []byte, room string, since uint64) []byte {
	dst = AppendChat(dst, SystemName, GapText)
	dst = dst[:len(dst)-1]
	dst = append(dst, `,"room":`...)
	dst = AppendJSONString(dst, room)
	dst = append(dst, `,"gap":true,"since":`...)
	dst = strconv.AppendUint(dst, since, 10)
	return append(dst, '}')
}
