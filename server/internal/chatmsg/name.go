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

// CheckUsername trims and validates a requested username and returns the
// display name. Its uniqueness key is NameKey (AppendNameKey).
func CheckUsername(raw []byte) (string, error) {
	if !utf8.Valid(raw) {
		return "", ErrUsernameChars
	}
	s := strings.TrimSpace(string(raw))
	if s == "" {
		return "", ErrUsernameRequired
	}
	if utf8.RuneCountInString(s) > MaxUsername {
		return "", ErrUsernameLength
	}
	if !validNameRunes(s) || !validNameRunes(norm.NFKC.String(s)) { // NFKC can produce what the raw check allowed
		return "", ErrUsernameChars
	}
	if reserved(s) {
		return "", ErrUsernameReserved
	}
	return s, nil
}

// reserved reports whether name looks like SystemName in any case: its
// key, or the key of the skeleton of its upper- or lower-case spelling, is
// System's. (Confusables are case-sensitive: Armenian "Տ" looks like "S"
// while its lower case "ս" looks like "u", and Cyrillic "т" looks like a
// small capital T; so the skeleton is taken before case folding too.)
func reserved(name string) bool {
	if isASCII(name) {
		return reservedASCII(name)
	}
	return reservedSlow(name)
}

func reservedSlow(name string) bool {
	n := norm.NFKC.String(name)
	for _, v := range []string{n, strings.ToUpper(n), strings.ToLower(n)} {
		if NameKey(v) == reservedKey || NameKey(skeleton(v)) == reservedKey {
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
// case). Only joins and leaves compute it, never a chat message; an ASCII
// name, the common case, takes a table instead of the Unicode transforms,
// which allocate kilobytes per call.
func NameKey(name string) string {
	if key, ok := asciiKey(name); ok {
		return key
	}
	return nameKeySlow(name)
}

// MaxNameKey is a buffer size that AppendNameKey fills without growing
// for any ASCII name.
const MaxNameKey = 8 * MaxUsername

// AppendNameKey appends NameKey(name) to dst; for an ASCII name without
// a heap allocation (a server keeps only a hash of the key per member).
func AppendNameKey(dst []byte, name string) []byte {
	if !isASCII(name) {
		return append(dst, nameKeySlow(name)...)
	}
	for i := 0; i < len(name); i++ {
		dst = append(dst, asciiKeys[name[i]]...)
	}
	return dst
}

func nameKeySlow(name string) string {
	fold := cases.Fold()
	s := norm.NFD.String(fold.String(norm.NFKC.String(name)))
	s = strings.Map(func(r rune) rune {
		if unicode.Is(unicode.Mn, r) {
			return -1
		}
		return r
	}, s)
	key := norm.NFC.String(fold.String(confusables.Skeleton(s)))
	if key == name {
		return name // keep one string, not two, for a name that is its own key
	}
	return key
}

// skeleton is confusables.Skeleton, through the table for ASCII.
func skeleton(s string) string {
	if !isASCII(s) {
		return confusables.Skeleton(s)
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		b.WriteString(asciiSkeleton[s[i]])
	}
	return b.String()
}

// asciiKeys and asciiSkeleton hold, for each ASCII character, its key and
// its skeleton as the Unicode path computes them. For an ASCII name both
// transforms work character by character, so the tables give the same
// strings without the transforms' allocations (TestNameKeyASCIIFastPath).
var asciiKeys, asciiSkeleton = func() (keys, skel [128]string) {
	for c := range 128 {
		keys[c] = nameKeySlow(string(rune(c)))
		skel[c] = confusables.Skeleton(string(rune(c)))
	}
	return keys, skel
}()

// reservedASCII is reserved for an ASCII name, without a heap allocation:
// NFKC leaves ASCII as it is, case mapping is byte by byte and the tables
// give each byte's key and skeleton (TestReservedASCIIFastPath). The
// general path made about ten short-lived strings per join, and that
// garbage, interleaved in the heap with the long-lived names of the
// clients joining at the same time, stayed resident after a join storm.
func reservedASCII(name string) bool {
	var spelled, skel, key [MaxNameKey]byte
	for _, spell := range [...]func(byte) byte{asItIs, upperASCII, lowerASCII} {
		v := spelled[:0]
		for i := 0; i < len(name); i++ {
			v = append(v, spell(name[i]))
		}
		if isReservedKey(key[:0], v) {
			return true
		}
		sk := skel[:0]
		for _, c := range v {
			sk = append(sk, asciiSkeleton[c]...)
		}
		if isReservedKey(key[:0], sk) {
			return true
		}
	}
	return false
}

// isReservedKey reports whether NameKey(s) is reservedKey, building an
// ASCII key in buf.
func isReservedKey(buf, s []byte) bool {
	for _, c := range s {
		if c >= utf8.RuneSelf { // a skeleton left ASCII
			return NameKey(string(s)) == reservedKey
		}
		buf = append(buf, asciiKeys[c]...)
	}
	return string(buf) == reservedKey
}

func asItIs(c byte) byte { return c }

func upperASCII(c byte) byte {
	if 'a' <= c && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c - 'A' + 'a'
	}
	return c
}

// asciiKey computes NameKey for an ASCII name; ok is false for any other.
func asciiKey(name string) (string, bool) {
	if !isASCII(name) {
		return "", false
	}
	var buf [MaxNameKey]byte
	b := AppendNameKey(buf[:0], name)
	if string(b) == name {
		return name, true // no allocation: the name is its own key
	}
	return string(b), true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
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
