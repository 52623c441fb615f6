// Package wsframe is gochat's RFC 6455 codec: client frame headers parsed
// from bytes already read (never from a blocking reader), server frames
// encoded, close payloads checked, UTF-8 validated incrementally, and every
// way a connection can end named as a CloseCause. It does no I/O and holds
// no state beyond its arguments, so everything here is safe for concurrent
// use.
package wsframe

import (
	"encoding/binary"

	"github.com/gobwas/ws"
)

// Header is a parsed client frame header.
type Header struct {
	Fin    bool
	Op     ws.OpCode
	Mask   [4]byte
	Length int64 // payload length
	Size   int   // header length in bytes
}

// MaxHeaderSize is the longest server frame header (no mask).
const MaxHeaderSize = 10

// MaxControlPayload is RFC 6455's bound on control frame payloads.
const MaxControlPayload = 125

// ParseHeader parses the client frame header at the start of b. It returns
// ok=false when b is too short to hold the whole header, and a non-nil
// violation when the header breaks RFC 6455 or maxPayload (which bounds data
// frames; control frames are bounded by the RFC). What the first two bytes
// show is rejected before the rest of the header arrives.
func ParseHeader(b []byte, maxPayload int64) (h Header, ok bool, violation *CloseCause) {
	if len(b) < 2 {
		return h, false, nil
	}
	h.Fin = b[0]&0x80 != 0
	rsv := b[0] & 0x70
	h.Op = ws.OpCode(b[0] & 0x0f)
	masked := b[1]&0x80 != 0
	n := int64(b[1] & 0x7f)
	h.Size = 2
	switch n {
	case 126:
		h.Size += 2
	case 127:
		h.Size += 8
	}
	if masked {
		h.Size += 4
	}
	switch {
	case rsv != 0: // no extension is negotiated
		return h, false, ErrReservedBits
	case !validOpCode(h.Op):
		return h, false, ErrReservedOpCode
	case !masked: // RFC 6455 5.1: clients must mask
		return h, false, ErrUnmasked
	case h.Op.IsControl() && (!h.Fin || n > MaxControlPayload):
		return h, false, ErrBadControlFrame
	}
	if len(b) < h.Size {
		return h, false, nil
	}
	switch n {
	case 126:
		n = int64(binary.BigEndian.Uint16(b[2:4]))
	case 127:
		u := binary.BigEndian.Uint64(b[2:10])
		if u > 1<<62 {
			return h, false, ErrTooBig
		}
		n = int64(u)
	}
	h.Length = n
	if !h.Op.IsControl() && n > maxPayload {
		return h, false, ErrTooBig
	}
	copy(h.Mask[:], b[h.Size-4:h.Size])
	return h, true, nil
}

func validOpCode(op ws.OpCode) bool {
	switch op {
	case ws.OpContinuation, ws.OpText, ws.OpBinary, ws.OpClose, ws.OpPing, ws.OpPong:
		return true
	}
	return false
}

// PutHeader writes an unmasked FIN frame header for a payload of n bytes into
// the end of dst[:MaxHeaderSize] and returns where it starts. Writing the
// header right-aligned lets a frame be encoded payload-first into one buffer
// and sent as buf[start:] with no copy.
func PutHeader(dst []byte, op ws.OpCode, n int) (start int) {
	switch {
	case n <= 125:
		start = MaxHeaderSize - 2
		dst[start+1] = byte(n)
	case n <= 0xffff:
		start = MaxHeaderSize - 4
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

// AppendFrame appends one unmasked FIN frame carrying payload to dst.
func AppendFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	var hdr [MaxHeaderSize]byte
	start := PutHeader(hdr[:], op, len(payload))
	dst = append(dst, hdr[start:]...)
	return append(dst, payload...)
}

// AppendFramed appends a frame whose payload is written by encode, payload
// first after room for the longest header, then moves the header in front:
// one encode, no temporary buffer.
func AppendFramed(dst []byte, op ws.OpCode, encode func([]byte) []byte) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, MaxHeaderSize)...)
	dst = encode(dst)
	payload := len(dst) - start - MaxHeaderSize
	var hdr [MaxHeaderSize]byte
	hs := PutHeader(hdr[:], op, payload)
	hn := MaxHeaderSize - hs
	copy(dst[start+hn:], dst[start+MaxHeaderSize:])
	copy(dst[start:], hdr[hs:])
	return dst[:len(dst)-(MaxHeaderSize-hn)]
}

// FrameEnd returns the end of the frame that holds byte n of frames, a run
// of complete server frames (n itself when a frame starts there). A write
// that the kernel took only part of must be finished up to here, or the
// peer's stream is corrupt.
func FrameEnd(frames []byte, n int) int {
	pos := 0
	for pos < n && pos < len(frames) {
		pos += frameSize(frames[pos:])
	}
	return min(pos, len(frames))
}

// frameSize is the length of the server frame at the start of b.
func frameSize(b []byte) int {
	switch n := int(b[1] & 0x7f); n {
	case 126:
		return 4 + int(binary.BigEndian.Uint16(b[2:]))
	case 127:
		return 10 + int(binary.BigEndian.Uint64(b[2:]))
	default:
		return 2 + n
	}
}

// Payload returns the payload of frame, one complete unmasked server frame.
func Payload(frame []byte) []byte {
	return frame[headerSize(frame):]
}

// headerSize is the length of the header of the server frame at the start
// of b.
func headerSize(b []byte) int {
	switch b[1] & 0x7f {
	case 126:
		return 4
	case 127:
		return 10
	default:
		return 2
	}
}
