package chatmsg

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/mtibben/confusables"
	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
)

// MaxUsername is the longest username in characters (SPEC §2).
const MaxUsername = 32

// SystemName is the sender of notices and errors; no user may look like it.
const SystemName = "System"

// reservedKey is the key of SystemName: every name with this key is reserved.
var reservedKey = NameKey(SystemName)

// CheckUsername trims and validates a requested username. It returns the
// display name and the key that makes names unique (NameKey).
func CheckUsername(raw []byte) (name, key string, err error) {
	if !utf8.Valid(raw) {
		return "", "", ErrUsernameChars
	}
	s := strings.TrimSpace(string(raw))
	if s == "" {
		return "", "", ErrUsernameRequired
	}
	if utf8.RuneCountInString(s) > MaxUsername {
		return "", "", ErrUsernameLength
	}
	if !validNameRunes(s) || !validNameRunes(norm.NFKC.String(s)) { // NFKC can produce what the raw check allowed
		return "", "", ErrUsernameChars
	}
	if reserved(s) {
		return "", "", ErrUsernameReserved
	}
	return s, NameKey(s), nil
}

// reserved reports whether name looks like SystemName in any case: its
// key, or the key of the skeleton of its upper- or lower-case spelling, is
// System's. (Confusables are case-sensitive: Armenian "Տ" looks like "S"
// while its lower case "ս" looks like "u", and Cyrillic "т" looks like a
// small capital T; so the skeleton is taken before case folding too.)
func reserved(name string) bool {
	n := norm.NFKC.String(name)
	for _, v := range []string{n, strings.ToUpper(n), strings.ToLower(n)} {
		if NameKey(v) == reservedKey || NameKey(confusables.Skeleton(v)) == reservedKey {
			return true
		}
	}
	return false
}

// NameKey is the uniqueness key of a name: two names with one key look
// alike and are one name. It is the UTS #39 skeleton (Unicode's
// confusables.txt, via github.com/mtibben/confusables) of the name after
// NFKC and case folding, with combining marks removed (so "Systẹm" is
// "System") and folded once more (the skeleton maps some letters to upper
// case). Only joins and leaves compute it, never a chat message.
func NameKey(name string) string {
	fold := cases.Fold()
	s := norm.NFD.String(fold.String(norm.NFKC.String(name)))
	s = strings.Map(func(r rune) rune {
		if unicode.Is(unicode.Mn, r) {
			return -1
		}
		return r
	}, s)
	return norm.NFC.String(fold.String(confusables.Skeleton(s)))
}

func validNameRunes(s string) bool {
	for _, r := range s {
		if !allowedNameRune(r) {
			return false
		}
	}
	return true
}

// allowedNameRune rejects control, format (which includes the zero-width
// characters and bidi overrides), private-use, surrogate, separator
// characters other than the plain space, and invisible fillers.
func allowedNameRune(r rune) bool {
	switch {
	case r == ' ':
		return true
	case r == utf8.RuneError:
		return false
	case unicode.In(r, unicode.Cc, unicode.Cf, unicode.Co, unicode.Cs, unicode.Z):
		return false
	case r == '\u115f' || r == '\u1160' || r == '\u3164' || r == '\uffa0' || r == '\u2800':
		return false // Hangul fillers and the braille blank render as nothing
	}
	return true
}
