package server

import (
	"encoding/binary"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// frameHeader is a parsed client frame header. Parsing works on the bytes
// already read, so a frame that arrives in pieces never makes a worker wait
// (gobwas's ws.ReadHeader expects a blocking reader).
type frameHeader struct {
	fin    bool
	op     ws.OpCode
	masked bool
	mask   [4]byte
	length int64 // payload length
	size   int   // header length in bytes
}

// parseHeader parses the frame header at the start of b. It returns ok=false
// when b is too short to hold the whole header; a non-zero code when the
// header breaks RFC 6455 or the server's limits, which the connection then
// closes with. maxPayload bounds data frames (control frames are bounded to
// 125 bytes by the RFC).
func parseHeader(b []byte, maxPayload int64) (h frameHeader, ok bool, code ws.StatusCode) {
	if len(b) < 2 {
		return h, false, 0
	}
	h.fin = b[0]&0x80 != 0
	rsv := b[0] & 0x70
	h.op = ws.OpCode(b[0] & 0x0f)
	h.masked = b[1]&0x80 != 0
	n := int64(b[1] & 0x7f)
	h.size = 2
	switch n {
	case 126:
		h.size += 2
	case 127:
		h.size += 8
	}
	if h.masked {
		h.size += 4
	}

	// Reject what the first two bytes already show, before waiting for more.
	switch {
	case rsv != 0: // no extension is negotiated
		return h, false, ws.StatusProtocolError
	case !validOpCode(h.op):
		return h, false, ws.StatusProtocolError
	case !h.masked: // RFC 6455 5.1: clients must mask
		return h, false, ws.StatusProtocolError
	case h.op.IsControl() && (!h.fin || n > 125):
		return h, false, ws.StatusProtocolError
	}
	if len(b) < h.size {
		return h, false, 0
	}
	switch n {
	case 126:
		n = int64(binary.BigEndian.Uint16(b[2:4]))
	case 127:
		u := binary.BigEndian.Uint64(b[2:10])
		if u > 1<<62 {
			return h, false, ws.StatusMessageTooBig
		}
		n = int64(u)
	}
	h.length = n
	if n > maxPayload {
		return h, false, ws.StatusMessageTooBig
	}
	copy(h.mask[:], b[h.size-4:h.size])
	return h, true, 0
}

func validOpCode(op ws.OpCode) bool {
	switch op {
	case ws.OpContinuation, ws.OpText, ws.OpBinary, ws.OpClose, ws.OpPing, ws.OpPong:
		return true
	}
	return false
}

// maxHeaderSize is the longest server frame header (no mask).
const maxHeaderSize = 10

// putHeader writes an unmasked FIN frame header for a payload of n bytes into
// the end of dst[:maxHeaderSize] and returns where it starts. Writing the
// header right-aligned lets a frame be encoded payload-first into one buffer
// and sent as buf[start:] with no copy.
func putHeader(dst []byte, op ws.OpCode, n int) (start int) {
	switch {
	case n <= 125:
		start = maxHeaderSize - 2
		dst[start+1] = byte(n)
	case n <= 0xffff:
		start = maxHeaderSize - 4
		dst[start+1] = 126
		binary.BigEndian.PutUint16(dst[start+2:], uint16(n))
	default:
		start = 0
		dst[1] = 127
		binary.BigEndian.PutUint64(dst[2:], uint64(n))
	}
	dst[start] = 0x80 | byte(op)
	return start
}

// appendFrame appends one unmasked FIN frame carrying payload to dst.
func appendFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	var hdr [maxHeaderSize]byte
	start := putHeader(hdr[:], op, len(payload))
	dst = append(dst, hdr[start:]...)
	return append(dst, payload...)
}

// appendClose appends a close frame with code and a fixed reason.
func appendClose(dst []byte, code ws.StatusCode, reason string) []byte {
	var p [125]byte
	binary.BigEndian.PutUint16(p[:2], uint16(code))
	n := 2 + copy(p[2:], reason)
	return appendFrame(dst, ws.OpClose, p[:n])
}

// checkClosePayload validates a client close frame body (RFC 6455 5.5.1,
// 7.4). It returns the code to echo, or a failure code.
func checkClosePayload(p []byte) (echo ws.StatusCode, fail ws.StatusCode) {
	switch {
	case len(p) == 0:
		return ws.StatusNormalClosure, 0
	case len(p) == 1:
		return 0, ws.StatusProtocolError
	}
	code := ws.StatusCode(binary.BigEndian.Uint16(p))
	if !validCloseCode(code) {
		return 0, ws.StatusProtocolError
	}
	if !utf8.Valid(p[2:]) {
		return 0, ws.StatusProtocolError
	}
	return code, 0
}

// validCloseCode reports whether a peer may send code (RFC 6455 7.4.1/7.4.2).
func validCloseCode(c ws.StatusCode) bool {
	switch {
	case c >= 1000 && c <= 1003, c >= 1007 && c <= 1014:
		return true
	case c >= 3000 && c <= 4999:
		return true
	}
	return false
}
