package chatmsg

import (
	"encoding/json"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Message is a decoded client message. Its byte slices point into the
// scratch buffer passed to Parse and are valid until it is reused.
type Message struct {
	Username, Content       []byte
	HasUsername, HasContent bool
}

// Parse decodes a client message: one JSON object whose only keys
// are "username" and "content", each a string or null. It never recurses, so
// deep nesting costs nothing, and it decodes strings into scratch, so a
// message costs no allocation once scratch has grown.
func Parse(b, scratch []byte) (m Message, _ []byte, err error) {
	m, scratch, err = parseObject(b, scratch[:0])
	if err != nil && err != ErrBadJSON && !json.Valid(b) {
		err = ErrBadJSON // malformed JSON is reported as such, whatever came first
	}
	return m, scratch, err
}

func parseObject(b, scratch []byte) (m Message, _ []byte, err error) {
	p := jsonParser{b: b}
	p.skipSpace()
	if !p.consume('{') {
		return m, scratch, ErrNotObject
	}
	var uStart, uEnd, cStart, cEnd int
	p.skipSpace()
	if !p.consume('}') {
		for {
			p.skipSpace()
			keyStart := len(scratch)
			var ok bool
			if scratch, ok = p.str(scratch); !ok {
				return m, scratch, ErrBadJSON
			}
			key := string(scratch[keyStart:]) // no allocation: used only in the switch
			var field int
			switch key {
			case "username":
				field = 1
			case "content":
				field = 2
			default:
				return m, scratch, ErrUnknownField
			}
			scratch = scratch[:keyStart]
			p.skipSpace()
			if !p.consume(':') {
				return m, scratch, ErrBadJSON
			}
			p.skipSpace()
			start := len(scratch)
			switch {
			case p.i < len(p.b) && p.b[p.i] == '"':
				if scratch, ok = p.str(scratch); !ok {
					return m, scratch, ErrBadJSON
				}
				if field == 1 {
					uStart, uEnd, m.HasUsername = start, len(scratch), true
				} else {
					cStart, cEnd, m.HasContent = start, len(scratch), true
				}
			case p.literal("null"):
				// As encoding/json with *string fields: null unsets.
				if field == 1 {
					m.HasUsername = false
				} else {
					m.HasContent = false
				}
			default:
				return m, scratch, ErrWrongType
			}
			p.skipSpace()
			if p.consume(',') {
				continue
			}
			if p.consume('}') {
				break
			}
			return m, scratch, ErrBadJSON
		}
	}
	p.skipSpace()
	if p.i != len(p.b) {
		return m, scratch, ErrBadJSON
	}
	m.Username = scratch[uStart:uEnd]
	m.Content = scratch[cStart:cEnd]
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
