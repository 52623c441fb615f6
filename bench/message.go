package main

import (
	"bytes"
	"strconv"
)

// The bench encodes everything it needs to measure into the chat content so
// that receivers can account for a frame without decoding JSON:
//
//	~RRRRRRRR:KTTTTTTTTTTTTTTTTSSSSSSQQQQQQQQQQ....
//
// R is the run id (so frames from other users or an earlier run are never
// counted), K the kind ('M' measured, 'B' barrier), T the send time in
// nanoseconds since the process' monotonic base, S the sender index and Q the
// sender's sequence number, all fixed-width decimal so a receiver can parse
// them at fixed offsets. The rest is padding up to -size bytes. Only
// characters that JSON never escapes are used, so the content arrives
// byte-for-byte as sent.
const (
	runIDLen   = 8
	tsDigits   = 16
	sendDigits = 6
	seqDigits  = 10

	offKind   = 1 + runIDLen + 1
	offTS     = offKind + 1
	offSender = offTS + tsDigits
	offSeq    = offSender + sendDigits
	// minContent is the smallest -size that still carries the header.
	minContent = offSeq + seqDigits

	kindMeasured = 'M'
	kindBarrier  = 'B'
)

// Prefixes and suffixes of the server's JSON (exactly two keys, in this order).
var (
	msgPrefix   = []byte(`{"username":"`)
	msgMiddle   = []byte(`","content":"`)
	msgSuffix   = []byte(`"}`)
	systemName  = []byte("System")
	joinedTail  = []byte(" joined the chat")
	leftTail    = []byte(" left the chat")
	errorPrefix = []byte("Error: ")
)

// splitMessage returns the raw (still JSON-escaped) username and content of a
// server frame. It relies on the server's fixed key order instead of a JSON
// decoder because it runs once per received frame on every client.
func splitMessage(p []byte) (user, content []byte, ok bool) {
	p = bytes.TrimRight(p, " \r\n\t")
	if !bytes.HasPrefix(p, msgPrefix) || !bytes.HasSuffix(p, msgSuffix) {
		return nil, nil, false
	}
	p = p[len(msgPrefix) : len(p)-len(msgSuffix)]
	i := bytes.Index(p, msgMiddle)
	if i < 0 {
		return nil, nil, false
	}
	return p[:i], p[i+len(msgMiddle):], true
}

// appendContent appends a bench content of exactly size bytes (at least
// minContent) to dst.
func appendContent(dst []byte, runID string, kind byte, ts int64, sender, seq int, size int) []byte {
	start := len(dst)
	dst = append(dst, '~')
	dst = append(dst, runID...)
	dst = append(dst, ':', kind)
	dst = appendFixed(dst, uint64(ts), tsDigits)
	dst = appendFixed(dst, uint64(sender), sendDigits)
	dst = appendFixed(dst, uint64(seq), seqDigits)
	for len(dst)-start < size {
		dst = append(dst, '.')
	}
	return dst
}

// appendFixed appends v as exactly width decimal digits (zero padded,
// truncated to the low digits if it does not fit).
func appendFixed(dst []byte, v uint64, width int) []byte {
	n := len(dst)
	for i := 0; i < width; i++ {
		dst = append(dst, '0')
	}
	for i := len(dst) - 1; i >= n && v > 0; i-- {
		dst[i] = byte('0' + v%10)
		v /= 10
	}
	return dst
}

// parseFixed parses a fixed-width decimal field; ok is false on any non-digit.
func parseFixed(p []byte) (v uint64, ok bool) {
	for _, c := range p {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, true
}

// benchContent is the decoded header of a bench content.
type benchContent struct {
	kind   byte
	ts     int64
	sender int
	seq    int
}

// parseContent decodes the header written by appendContent for this run.
func parseContent(c []byte, runID string) (bc benchContent, ok bool) {
	if len(c) < minContent || c[0] != '~' || c[offKind-1] != ':' ||
		string(c[1:1+runIDLen]) != runID { // no allocation: compiler-optimised comparison
		return bc, false
	}
	ts, ok1 := parseFixed(c[offTS:offSender])
	s, ok2 := parseFixed(c[offSender:offSeq])
	q, ok3 := parseFixed(c[offSeq:minContent])
	if !ok1 || !ok2 || !ok3 {
		return bc, false
	}
	return benchContent{kind: c[offKind], ts: int64(ts), sender: int(s), seq: int(q)}, true
}

// userName is the username of client i in run runID: short, ASCII and
// unique per connection, and parseable back to i without a map lookup.
func userName(runID string, i int) string {
	return "b" + runID + "_" + strconv.Itoa(i)
}

// parseUser returns the client index of a username from this run.
func parseUser(u []byte, runID string) (int, bool) {
	if len(u) < 1+runIDLen+2 || u[0] != 'b' || string(u[1:1+runIDLen]) != runID || u[1+runIDLen] != '_' {
		return 0, false
	}
	v, ok := parseFixed(u[2+runIDLen:])
	return int(v), ok
}

// joinFrame is the JSON of the first message a client sends.
func joinFrame(name string) []byte {
	return []byte(`{"username":"` + name + `","content":""}`)
}
