package server

import (
	"net/http"
	"strconv"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
)

// The HTTP answers the reactor gives without net/http, in one place: each
// is written once at start-up, says Connection: close, and is counted by
// the metric it names.

// cannedResponse is a complete HTTP response and the counter it bumps.
type cannedResponse struct {
	bytes  []byte
	metric func(*metrics) prometheus.Counter
}

func (r *cannedResponse) count(m *metrics) { r.metric(m).Inc() }

func canned(status int, extra, body string, metric func(*metrics) prometheus.Counter) *cannedResponse {
	return &cannedResponse{
		bytes: []byte("HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\n" +
			"Connection: close\r\n" + extra + "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body),
		metric: metric,
	}
}

var (
	// response400 answers every malformed upgrade (RELIABILITY 1).
	response400 = canned(http.StatusBadRequest, "", "", func(m *metrics) prometheus.Counter { return m.handshakeRejects })
	// response431 answers a request head over maxHandshake.
	response431 = canned(http.StatusRequestHeaderFieldsTooLarge, "", "", func(m *metrics) prometheus.Counter { return m.handshakeRejects })
	// response503 sheds a connection at accept while the pool is overloaded
	// or the process is out of fds: it fits any fresh socket buffer.
	response503 = canned(http.StatusServiceUnavailable, "Retry-After: 1\r\n", "", func(m *metrics) prometheus.Counter { return m.shed })
	// responseHealthy answers /healthz on a connection accepted past the fd
	// limit: the process is alive, only full (the same body as routes.go).
	responseHealthy = canned(http.StatusOK, "Content-Type: text/plain; charset=utf-8\r\n", "ok\n", func(m *metrics) prometheus.Counter { return m.fullHealthz })
)

// Refusals decided inside gobwas's upgrade (after the head parsed), which
// writes them as HTTP responses with the status given.
var (
	rejectForbidden   = ws.RejectConnectionError(ws.RejectionStatus(http.StatusForbidden), ws.RejectionReason("origin not allowed"))
	rejectUnavailable = ws.RejectConnectionError(ws.RejectionStatus(http.StatusServiceUnavailable), ws.RejectionReason("server unavailable"))
	rejectRoomLimit   = ws.RejectConnectionError(ws.RejectionStatus(http.StatusServiceUnavailable), ws.RejectionReason("room limit reached: no new room can be opened now"))
	rejectRoomName    = ws.RejectConnectionError(ws.RejectionStatus(http.StatusBadRequest), ws.RejectionReason("bad room name: 1-64 of a-z 0-9 - _ . starting with a letter or digit"))
	rejectHistory     = ws.RejectConnectionError(ws.RejectionStatus(http.StatusBadRequest), ws.RejectionReason("bad history: want a count from 0 to 100000"))
	rejectSince       = ws.RejectConnectionError(ws.RejectionStatus(http.StatusBadRequest), ws.RejectionReason("bad since: want a message id this server issued"))
	rejectSinceV1     = ws.RejectConnectionError(ws.RejectionStatus(http.StatusBadRequest), ws.RejectionReason("since needs the gochat.v2 subprotocol"))
)
