package wsframe

import (
	"encoding/binary"
	"strconv"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// CloseCause is why a connection ends: the close code and fixed reason sent
// to the peer, the label it is counted under in gochat_disconnects_total,
// and whether the socket is dropped at once (Force) instead of closed with
// a handshake. Reasons and labels are fixed strings, never user input, so a
// client can neither put text in a close frame nor create a metric series.
// Causes are values compared by pointer: every way to end has one variable.
type CloseCause struct {
	Code   ws.StatusCode
	Reason string
	Label  string
	Force  bool
}

// Protocol violations (RFC 6455), one per way a client can break it.
var (
	ErrReservedBits    = &CloseCause{Code: ws.StatusProtocolError, Reason: "protocol error", Label: "1002"}
	ErrReservedOpCode  = &CloseCause{Code: ws.StatusProtocolError, Reason: "protocol error", Label: "1002"}
	ErrUnmasked        = &CloseCause{Code: ws.StatusProtocolError, Reason: "protocol error", Label: "1002"}
	ErrBadControlFrame = &CloseCause{Code: ws.StatusProtocolError, Reason: "protocol error", Label: "1002"}
	ErrBadContinuation = &CloseCause{Code: ws.StatusProtocolError, Reason: "protocol error", Label: "1002"}
	ErrBadClose        = &CloseCause{Code: ws.StatusProtocolError, Reason: "protocol error", Label: "1002"}
	ErrBinary          = &CloseCause{Code: ws.StatusUnsupportedData, Reason: "binary messages not supported", Label: "1003"}
	ErrInvalidUTF8     = &CloseCause{Code: ws.StatusInvalidFramePayloadData, Reason: "invalid utf-8", Label: "1007"}
	ErrTooBig          = &CloseCause{Code: ws.StatusMessageTooBig, Reason: "message too big", Label: "1009"}
	ErrTooManyFrags    = &CloseCause{Code: ws.StatusMessageTooBig, Reason: "too many fragments", Label: "1009"}
)

// PeerClose is the echo of a client's close frame carrying code. The label
// is the code for the codes RFC 6455 defines and "other" for the
// application range (3000-4999), which clients choose freely.
func PeerClose(code ws.StatusCode) CloseCause {
	label := "other"
	if code >= 1000 && code < 1000+ws.StatusCode(len(codeLabels)) {
		label = codeLabels[code-1000]
	}
	return CloseCause{Code: code, Label: label}
}

var codeLabels = func() (l [16]string) {
	for i := range l {
		l[i] = strconv.Itoa(1000 + i)
	}
	return l
}()

// AppendClose appends a close frame carrying the cause's code and reason.
func AppendClose(dst []byte, c *CloseCause) []byte {
	var p [MaxControlPayload]byte
	binary.BigEndian.PutUint16(p[:2], uint16(c.Code))
	n := 2 + copy(p[2:], c.Reason)
	return AppendFrame(dst, ws.OpClose, p[:n])
}

// CheckClosePayload validates a client close frame body (RFC 6455 5.5.1,
// 7.4) and returns the code to echo, or ok=false for a malformed body.
func CheckClosePayload(p []byte) (echo ws.StatusCode, ok bool) {
	switch {
	case len(p) == 0:
		return ws.StatusNormalClosure, true
	case len(p) == 1:
		return 0, false
	}
	code := ws.StatusCode(binary.BigEndian.Uint16(p))
	if !ValidCloseCode(code) || !utf8.Valid(p[2:]) {
		return 0, false
	}
	return code, true
}

// ValidCloseCode reports whether a peer may send code (RFC 6455 7.4.1/7.4.2).
func ValidCloseCode(c ws.StatusCode) bool {
	switch {
	case c >= 1000 && c <= 1003, c >= 1007 && c <= 1014:
		return true
	case c >= 3000 && c <= 4999:
		return true
	}
	return false
}
