package server

import (
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"gochat/server/internal/chat"
	"gochat/server/internal/chatmsg"
)

//go:embed web
var webFiles embed.FS

// contentSecurityPolicy lets the page load only its own script and style and
// connect only to this host: user content can never run as code.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// maxListed caps the rooms, or the members of a room, one answer lists;
// the total is always given.
const maxListed = 1000

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// routes is the HTTP side of the one port: the page, health and metrics.
// /ws never reaches it (the reactor upgrades it); other paths are 404.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	static, err := fs.Sub(webFiles, "web")
	if err != nil {
		panic(err) // the embedded tree is part of the binary
	}
	page := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Security-Policy", contentSecurityPolicy)
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.Header().Set("Referrer-Policy", "no-referrer")
			h.ServeHTTP(w, r)
		})
	}
	mux.Handle("GET /{$}", page(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, static, "index.html")
	})))
	mux.Handle("GET /static/", page(http.StripPrefix("/static/", http.FileServerFS(static))))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if s.draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("draining\n"))
			return
		}
		if s.relay != nil && s.relay.Degraded() {
			// Still ready: its members chat among themselves and the
			// cluster gets their messages later (SPEC §9).
			_, _ = w.Write([]byte("ready (cluster out of reach)\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	// Uncompressed: the answer is about 15 KB, and a gzip or zstd encoder
	// for it allocates about 1 MB per scrape, which stays resident between
	// scrapes (the handler pools it) — as much as 2,000 idle connections.
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{DisableCompression: true}))
	mux.HandleFunc("GET /rooms", func(w http.ResponseWriter, r *http.Request) {
		rooms, total, ok := []chat.RoomInfo(nil), 0, false
		if s.relay != nil {
			rooms, total, ok = s.relay.Rooms(maxListed) // the whole cluster's
		}
		if !ok {
			rooms, total = s.hub.Rooms(maxListed)
		}
		if rooms == nil {
			rooms = []chat.RoomInfo{}
		}
		writeJSON(w, http.StatusOK, struct {
			Rooms []chat.RoomInfo `json:"rooms"`
			Total int             `json:"total"`
		}{rooms, total})
	})
	mux.HandleFunc("GET /rooms/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if !chatmsg.ValidRoom([]byte(name)) {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad room name"})
			return
		}
		members, total, ok := []string(nil), 0, false
		if s.relay != nil {
			members, total, ok = s.relay.RoomMembers(name, maxListed)
		}
		if !ok {
			members, total, ok = s.hub.RoomMembers(name, maxListed)
		}
		if !ok || members == nil {
			members = []string{} // an empty room does not exist: nobody is here
		}
		writeJSON(w, http.StatusOK, struct {
			Room    string   `json:"room"`
			Members []string `json:"members"`
			Total   int      `json:"total"`
		}{name, members, total})
	})
	return mux
}
