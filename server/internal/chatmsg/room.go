package chatmsg

// MaxRoomName is the longest room name (SPEC §8).
const MaxRoomName = 64

// DefaultRoom is the room of a client that names none: the seed's one chat.
const DefaultRoom = "lobby"

// ValidRoom reports whether name is a room name: 1-64 of a-z 0-9 - _ .,
// starting with a letter or digit (so "." and ".." are not names). Names
// are taken from the query string as they are: an escaped character such
// as %2F is a '%', which is not allowed.
func ValidRoom(name []byte) bool {
	if len(name) == 0 || len(name) > MaxRoomName {
		return false
	}
	for i, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '-' || c == '_' || c == '.') && i > 0:
		default:
			return false
		}
	}
	return true
}
