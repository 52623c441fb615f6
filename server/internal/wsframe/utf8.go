package wsframe

import "unicode/utf8"

// UTF8Checker validates a message's text as its fragments arrive, in time
// linear in the message: each call checks only the bytes not checked
// before (RFC 6455 8.1 lets a server fail fast on a fragment that cannot
// start valid UTF-8). The zero value is ready; Reset it between messages.
type UTF8Checker struct {
	valid int // msg[:valid] is valid UTF-8 ending on a character boundary
}

// Reset forgets the message checked so far.
func (u *UTF8Checker) Reset() { u.valid = 0 }

// Check reports whether msg — the whole message so far, of which a prefix
// was passed to earlier calls — can still be valid UTF-8. Unless complete,
// an incomplete character at the end is allowed.
func (u *UTF8Checker) Check(msg []byte, complete bool) bool {
	if u.valid > len(msg) {
		u.valid = 0
	}
	rest := msg[u.valid:]
	if complete {
		ok := utf8.Valid(rest)
		if ok {
			u.valid = len(msg)
		}
		return ok
	}
	// Leave out up to 3 trailing bytes that may start a character.
	cut := len(rest)
	for i := len(rest) - 1; i >= 0 && i >= len(rest)-3; i-- {
		if utf8.RuneStart(rest[i]) {
			if !utf8.FullRune(rest[i:]) {
				cut = i
			}
			break
		}
	}
	if !utf8.Valid(rest[:cut]) {
		return false
	}
	u.valid += cut
	return true
}
