// Package nbiochat is the chat on lesismal/nbio, as a comparison peer: the
// nbhttp engine (epoll pollers, non-blocking I/O, no goroutine per
// connection) with nbio's websocket upgrader, configured as nbio suggests
// for many connections: ReleaseWebsocketPayload, one poller per core, and
// MaxWriteBufferSize so a member that stops reading is closed once nbio
// holds that much unsent data for it (the slow-consumer rule).
//
// OnMessage runs on nbio's handler pool, serially per connection, so a
// sender's messages keep their order; a broadcast writes the frame to each
// member with WriteMessage, which never blocks (what the socket does not
// take is buffered by nbio and flushed on EPOLLOUT).
package nbiochat

import (
	"context"
	"net/http"
	"runtime"
	"time"

	"github.com/lesismal/nbio/logging"
	"github.com/lesismal/nbio/nbhttp"
	"github.com/lesismal/nbio/nbhttp/websocket"

	"gochat/bench/peers/chat"
	"gochat/bench/peers/internal/chatroom"
)

const (
	sendQueue = 1 << 20 // gochat's default -send-queue
	joinWait  = 10 * time.Second
)

type member struct {
	chatroom.Member
	c *websocket.Conn
}

// chatroom.Conn
func (m *member) Reject(errText string) {
	m.c.WriteMessage(websocket.TextMessage, chat.Error(errText))
	m.c.WriteClose(chat.CloseBadJoin, "")
	m.c.SetReadDeadline(time.Now().Add(2 * time.Second)) // for the client's close reply
}
func (m *member) SetReadDeadline(t time.Time) error { return m.c.SetReadDeadline(t) }
func (m *member) SendError(errText string) {
	m.c.WriteMessage(websocket.TextMessage, chat.Error(errText))
}

func publish(members []*member, payload []byte) {
	for _, m := range members {
		_ = m.c.WriteMessage(websocket.TextMessage, payload)
	}
}

// Start serves the chat on addr (/ws, /healthz) until stop is called.
func Start(addr string, presence bool) (stop func(), err error) {
	logging.SetLevel(logging.LevelError)
	r := chatroom.New(presence, publish)
	up := websocket.NewUpgrader()
	up.CheckOrigin = func(*http.Request) bool { return true }
	up.KeepaliveTime = 0 // no idle read deadline after the join, as in the other servers
	up.MessageLengthLimit = chat.MaxMessage
	up.OnOpen(func(c *websocket.Conn) {
		c.SetSession(&member{c: c})
		c.SetReadDeadline(time.Now().Add(joinWait))
	})
	up.OnMessage(func(c *websocket.Conn, _ websocket.MessageType, data []byte) {
		r.Message(c.Session().(*member), data)
	})
	up.OnClose(func(c *websocket.Conn, _ error) {
		if m, _ := c.Session().(*member); m != nil {
			r.Close(m)
		}
	})

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/ws", func(w http.ResponseWriter, req *http.Request) {
		if _, err := up.Upgrade(w, req, nil); err != nil {
			return
		}
	})
	engine := nbhttp.NewEngine(nbhttp.Config{
		Network:                 "tcp",
		Addrs:                   []string{addr},
		Handler:                 mux,
		NPoller:                 runtime.NumCPU(),
		MaxLoad:                 1 << 20,
		ReleaseWebsocketPayload: true,
		MaxWriteBufferSize:      sendQueue,
	})
	up.Engine = engine
	if err := engine.Start(); err != nil {
		return nil, err
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		engine.Shutdown(ctx)
	}, nil
}
