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
	"sync"
	"time"

	"github.com/lesismal/nbio/logging"
	"github.com/lesismal/nbio/nbhttp"
	"github.com/lesismal/nbio/nbhttp/websocket"

	"gochat/bench/peers/chat"
)

const (
	sendQueue = 1 << 20 // gochat's default -send-queue
	joinWait  = 10 * time.Second
)

type member struct {
	c      *websocket.Conn
	name   string
	joined bool
	idx    int
}

type room struct {
	presence bool
	names    chat.Names
	mu       sync.RWMutex
	members  []*member
}

func (r *room) add(m *member) {
	r.mu.Lock()
	m.idx = len(r.members)
	r.members = append(r.members, m)
	r.mu.Unlock()
}

func (r *room) remove(m *member) {
	r.mu.Lock()
	last := r.members[len(r.members)-1]
	r.members[m.idx] = last
	last.idx = m.idx
	r.members = r.members[:len(r.members)-1]
	r.mu.Unlock()
}

func (r *room) publish(payload []byte) {
	r.mu.RLock()
	for _, m := range r.members {
		_ = m.c.WriteMessage(websocket.TextMessage, payload)
	}
	r.mu.RUnlock()
}

func (r *room) onMessage(c *websocket.Conn, _ websocket.MessageType, data []byte) {
	m := c.Session().(*member)
	if !m.joined {
		name, content, bad := chat.Join(data)
		if bad == "" && !r.names.Claim(name) {
			bad = "Username is already taken"
		}
		if bad != "" {
			c.WriteMessage(websocket.TextMessage, chat.Error(bad))
			c.WriteClose(chat.CloseBadJoin, "")
			c.SetReadDeadline(time.Now().Add(2 * time.Second)) // for the client's close reply
			return
		}
		c.SetReadDeadline(time.Time{})
		m.name, m.joined = name, true
		r.add(m)
		if content != "" {
			r.publish(chat.Encode(name, content))
		}
		if r.presence {
			r.publish(chat.Joined(name))
		}
		return
	}
	content, bad := chat.Chat(data)
	switch {
	case bad != "":
		c.WriteMessage(websocket.TextMessage, chat.Error(bad))
	case content != "":
		r.publish(chat.Encode(m.name, content))
	}
}

func (r *room) onClose(c *websocket.Conn, _ error) {
	m, _ := c.Session().(*member)
	if m == nil || !m.joined {
		return
	}
	r.remove(m)
	r.names.Release(m.name)
	if r.presence {
		r.publish(chat.Left(m.name))
	}
}

// Start serves the chat on addr (/ws, /healthz) until stop is called.
func Start(addr string, presence bool) (stop func(), err error) {
	logging.SetLevel(logging.LevelError)
	r := &room{presence: presence}
	up := websocket.NewUpgrader()
	up.CheckOrigin = func(*http.Request) bool { return true }
	up.KeepaliveTime = 0 // no idle read deadline after the join, as in the other servers
	up.MessageLengthLimit = chat.MaxMessage
	up.OnOpen(func(c *websocket.Conn) {
		c.SetSession(&member{c: c})
		c.SetReadDeadline(time.Now().Add(joinWait))
	})
	up.OnMessage(r.onMessage)
	up.OnClose(r.onClose)

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
