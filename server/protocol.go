package server

import (
	"encoding/json"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
)

// chatError is a chat protocol error. Its text is what the offending client
// receives after "Error: ", so it is a fixed sentence, capitalized for
// people, and never echoes user input.
type chatError string

func (e chatError) Error() string { return string(e) }

// Chat protocol errors.
const (
	errNotObject        chatError = "Message must be a JSON object"
	errBadJSON          chatError = "Invalid JSON"
	errWrongType        chatError = "username and content must be strings"
	errUnknownField     chatError = "Unknown field: only username and content are allowed"
	errUsernameRequired chatError = "Username is required in first message"
	errUsernameLength   chatError = "Username must be 1-32 characters"
	errUsernameChars    chatError = "Username contains invalid characters"
	errUsernameReserved chatError = "Username is reserved"
	errUsernameTaken    chatError = "Username is already taken"
	errContentTooLong   chatError = "Content is too long"
	errRateLimited      chatError = "Rate limit exceeded, slow down"
	errTooManyErrors    chatError = "Too many errors"
	errServerBusy       chatError = "Server busy, message not sent"
)

// clientMsg is a decoded client message. Its byte slices point into the
// scratch buffer passed to parseClientMsg and are valid until it is reused.
type clientMsg struct {
	username, content       []byte
	hasUsername, hasContent bool
}

// parseClientMsg decodes a client message: one JSON object whose only keys
// are "username" and "content", each a string or null. It never recurses, so
// deep nesting costs nothing, and it decodes strings into scratch, so a
// message costs no allocation once scratch has grown.
func parseClientMsg(b, scratch []byte) (m clientMsg, _ []byte, err error) {
	m, scratch, err = parseObject(b, scratch[:0])
	if err != nil && err != errBadJSON && !json.Valid(b) {
		err = errBadJSON // malformed JSON is reported as such, whatever came first
	}
	return m, scratch, err
}

func parseObject(b, scratch []byte) (m clientMsg, _ []byte, err error) {
	p := jsonParser{b: b}
	p.skipSpace()
	if !p.consume('{') {
		return m, scratch, errNotObject
	}
	var uStart, uEnd, cStart, cEnd int
	p.skipSpace()
	if !p.consume('}') {
		for {
			p.skipSpace()
			keyStart := len(scratch)
			var ok bool
			if scratch, ok = p.str(scratch); !ok {
				return m, scratch, errBadJSON
			}
			key := string(scratch[keyStart:]) // no allocation: used only in the switch
			var field int
			switch key {
			case "username":
				field = 1
			case "content":
				field = 2
			default:
				return m, scratch, errUnknownField
			}
			scratch = scratch[:keyStart]
			p.skipSpace()
			if !p.consume(':') {
				return m, scratch, errBadJSON
			}
			p.skipSpace()
			start := len(scratch)
			switch {
			case p.i < len(p.b) && p.b[p.i] == '"':
				if scratch, ok = p.str(scratch); !ok {
					return m, scratch, errBadJSON
				}
				if field == 1 {
					uStart, uEnd, m.hasUsername = start, len(scratch), true
				} else {
					cStart, cEnd, m.hasContent = start, len(scratch), true
				}
			case p.literal("null"):
				// As encoding/json with *string fields: null unsets.
				if field == 1 {
					m.hasUsername = false
				} else {
					m.hasContent = false
				}
			default:
				return m, scratch, errWrongType
			}
			p.skipSpace()
			if p.consume(',') {
				continue
			}
			if p.consume('}') {
				break
			}
			return m, scratch, errBadJSON
		}
	}
	p.skipSpace()
	if p.i != len(p.b) {
		return m, scratch, errBadJSON
	}
	m.username = scratch[uStart:uEnd]
	m.content = scratch[cStart:cEnd]
	return m, scratch, nil
}

type jsonParser struct {
	b []byte
	i int
}

func (p *jsonParser) skipSpace() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsonParser) consume(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *jsonParser) literal(s string) bool {
	if strings.HasPrefix(string(p.b[p.i:]), s) {
		p.i += len(s)
		return true
	}
	return false
}

// str decodes the JSON string at p.i into dst. The input is valid UTF-8
// (checked at the frame layer); escapes are decoded as encoding/json does,
// including invalid surrogates becoming U+FFFD.
func (p *jsonParser) str(dst []byte) ([]byte, bool) {
	if !p.consume('"') {
		return dst, false
	}
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			p.i++
			return dst, true
		case c < 0x20:
			return dst, false
		case c != '\\':
			// Copy the run of plain bytes at once.
			j := p.i + 1
			for j < len(p.b) && p.b[j] != '"' && p.b[j] != '\\' && p.b[j] >= 0x20 {
				j++
			}
			dst = append(dst, p.b[p.i:j]...)
			p.i = j
			continue
		}
		if p.i+1 >= len(p.b) {
			return dst, false
		}
		e := p.b[p.i+1]
		p.i += 2
		switch e {
		case '"', '\\', '/':
			dst = append(dst, e)
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, ok := p.hex4()
			if !ok {
				return dst, false
			}
			if utf16IsSurrogate(r) {
				r2 := rune(-1)
				if p.i+1 < len(p.b) && p.b[p.i] == '\\' && p.b[p.i+1] == 'u' {
					save := p.i
					p.i += 2
					var ok2 bool
					if r2, ok2 = p.hex4(); !ok2 {
						return dst, false
					}
					if c := utf16Decode(r, r2); c != unicode.ReplacementChar {
						r = c
						r2 = -1
					} else {
						p.i = save // leave the second escape for the next round
						r2 = -1
					}
				}
				if utf16IsSurrogate(r) {
					r = unicode.ReplacementChar
				}
			}
			dst = utf8.AppendRune(dst, r)
		default:
			return dst, false
		}
	}
	return dst, false
}

func (p *jsonParser) hex4() (rune, bool) {
	if p.i+4 > len(p.b) {
		return 0, false
	}
	var r rune
	for _, c := range p.b[p.i : p.i+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	p.i += 4
	return r, true
}

func utf16IsSurrogate(r rune) bool { return r >= 0xd800 && r < 0xe000 }

func utf16Decode(r1, r2 rune) rune {
	if r1 >= 0xd800 && r1 < 0xdc00 && r2 >= 0xdc00 && r2 < 0xe000 {
		return (r1-0xd800)<<10 | (r2 - 0xdc00) + 0x10000
	}
	return unicode.ReplacementChar
}

// appendChat appends the server message {"username":u,"content":c} to dst,
// escaped exactly as encoding/json (with HTML escaping) encodes it, so the
// frames are byte-for-byte those of the original gorilla chat.
func appendChat(dst []byte, username, content string) []byte {
	dst = append(dst, `{"username":`...)
	dst = appendJSONString(dst, username)
	dst = append(dst, `,"content":`...)
	dst = appendJSONString(dst, content)
	return append(dst, '}')
}

const hexDigits = "0123456789abcdef"

func appendJSONString(dst []byte, s string) []byte {
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

// Username rules (SPEC §2).
const maxUsername = 32

// reservedName is the skeleton that no user may take.
const reservedName = "system"

// checkUsername trims and validates a requested username. It returns the
// display name and the key that makes names unique (NFKC + case folding).
func checkUsername(raw []byte) (name, key string, err error) {
	if !utf8.Valid(raw) {
		return "", "", errUsernameChars
	}
	s := strings.TrimSpace(string(raw))
	if s == "" {
		return "", "", errUsernameRequired
	}
	if utf8.RuneCountInString(s) > maxUsername {
		return "", "", errUsernameLength
	}
	for _, r := range s {
		if !allowedNameRune(r) {
			return "", "", errUsernameChars
		}
	}
	key = norm.NFKC.String(cases.Fold().String(norm.NFKC.String(s)))
	for _, r := range key { // NFKC can produce what the raw check allowed
		if !allowedNameRune(r) {
			return "", "", errUsernameChars
		}
	}
	if skeleton(key) == reservedName {
		return "", "", errUsernameReserved
	}
	return s, key, nil
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

// skeleton maps the look-alike letters that matter for the reserved name to
// their Latin forms (a small part of Unicode's confusables table), dropping
// combining marks, so "Ѕуѕтем" and "ѕystem" both become "system".
func skeleton(key string) string {
	var b strings.Builder
	for _, r := range key {
		if unicode.Is(unicode.Mn, r) {
			continue
		}
		if l, ok := confusables[r]; ok {
			r = l
		}
		b.WriteRune(r)
	}
	return b.String()
}

var confusables = map[rune]rune{
	// Cyrillic
	'а': 'a', 'в': 'b', 'е': 'e', 'ё': 'e', 'і': 'i', 'ї': 'i', 'ј': 'j', 'к': 'k', 'м': 'm',
	'н': 'h', 'о': 'o', 'р': 'p', 'с': 'c', 'т': 't', 'у': 'y', 'ў': 'y', 'х': 'x', 'ѕ': 's', 'ԁ': 'd',
	'ӏ': 'l', 'ԛ': 'q', 'ԝ': 'w', 'ү': 'y', 'ɡ': 'g',
	// Greek
	'α': 'a', 'β': 'b', 'ε': 'e', 'η': 'n', 'ι': 'i', 'κ': 'k', 'μ': 'm', 'ν': 'v', 'ο': 'o', 'ρ': 'p',
	'τ': 't', 'υ': 'u', 'χ': 'x', 'γ': 'y', 'σ': 'o', 'ϲ': 'c', 'ϳ': 'j',
	// Latin small capitals and digits used as letters
	'ʏ': 'y', 'ᴛ': 't', 'ᴇ': 'e', 'ᴍ': 'm', 'ꜱ': 's', '5': 's', '3': 'e', '$': 's', '0': 'o', '1': 'l',
}
