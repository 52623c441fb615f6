// Package gorillachat is the original design of the chat, kept as a
// comparison peer: gorilla/websocket with one read pump and one write pump
// goroutine per connection, a buffered send channel per client, and a hub
// goroutine that owns the member set and serialises register, unregister
// and broadcast through channels — the shape of gorilla's chat example.
//
// Two deviations from that example, both required by the protocol: each
// message is its own text frame (the example joins queued messages with
// newlines in one frame), and joins carry a username that the hub checks.
package gorillachat

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"gochat/bench/peers/chat"
)

const (
	writeWait  = 10 * time.Second  // time allowed to write one message
	pongWait   = 60 * time.Second  // time allowed to read the next pong
	pingPeriod = pongWait * 9 / 10 // pings are sent this often
	sendBuffer = 256               // messages queued per client before it counts as slow
	maxMessage = chat.MaxMessage   // bytes per inbound message
	joinWait   = 10 * time.Second  // time allowed for the first message
)

// client is one connection: the hub is the only sender on send and the
// only one that closes it; the write pump is its only reader.
type client struct {
	hub  *hub
	conn *websocket.Conn
	send chan []byte
	// closeCode is written by whoever closes send, before closing it; the
	// write pump reads it after seeing send closed.
	closeCode int
}

type joinReq struct {
	c       *client
	name    string
	content string
	result  chan bool
}

type direct struct {
	c   *client
	msg []byte
}

// hub owns clients and names; only its run goroutine touches them.
type hub struct {
	presence   bool
	clients    map[*client]string
	names      map[string]*client
	register   chan joinReq
	unregister chan *client
	broadcast  chan []byte
	direct     chan direct
	done       chan struct{}
}

func newHub(presence bool) *hub {
	return &hub{
		presence:   presence,
		clients:    map[*client]string{},
		names:      map[string]*client{},
		register:   make(chan joinReq),
		unregister: make(chan *client),
		broadcast:  make(chan []byte, 256),
		direct:     make(chan direct, 256),
		done:       make(chan struct{}),
	}
}

func (h *hub) run() {
	for {
		select {
		case <-h.done:
			return
		case j := <-h.register:
			k := chat.Key(j.name)
			if _, taken := h.names[k]; taken {
				j.result <- false
				continue
			}
			h.clients[j.c] = j.name
			h.names[k] = j.c
			j.result <- true
			if j.content != "" {
				h.fanOut(chat.Encode(j.name, j.content))
			}
			if h.presence {
				h.fanOut(chat.Joined(j.name))
			}
		case c := <-h.unregister:
			if name, ok := h.clients[c]; ok {
				h.drop(c, name, websocket.CloseNormalClosure)
				if h.presence {
					h.fanOut(chat.Left(name))
				}
			}
		case m := <-h.broadcast:
			h.fanOut(m)
		case d := <-h.direct:
			if _, ok := h.clients[d.c]; ok {
				select {
				case d.c.send <- d.msg:
				default:
				}
			}
		}
	}
}

// fanOut queues m for every member; a member whose queue is full is
// dropped as a slow consumer (close 1008), as in gorilla's example, and
// its leave notice follows.
func (h *hub) fanOut(m []byte) {
	var gone []string
	for c, name := range h.clients {
		select {
		case c.send <- m:
		default:
			h.drop(c, name, websocket.ClosePolicyViolation)
			gone = append(gone, name)
		}
	}
	if h.presence {
		for _, name := range gone {
			h.fanOut(chat.Left(name))
		}
	}
}

func (h *hub) drop(c *client, name string, code int) {
	delete(h.clients, c)
	delete(h.names, chat.Key(name))
	c.closeCode = code
	close(c.send)
}

// readPump reads the join, then chat messages, and hands them to the hub.
func (c *client) readPump() {
	registered := false
	defer func() {
		if registered {
			c.hub.unregister <- c
		}
		c.conn.Close()
	}()
	c.conn.SetReadLimit(maxMessage)
	c.conn.SetReadDeadline(time.Now().Add(joinWait))
	c.conn.SetPongHandler(func(string) error { c.conn.SetReadDeadline(time.Now().Add(pongWait)); return nil })

	_, p, err := c.conn.ReadMessage()
	if err != nil {
		c.reject("", websocket.ClosePolicyViolation)
		return
	}
	name, content, bad := chat.Join(p)
	if bad == "" {
		j := joinReq{c: c, name: name, content: content, result: make(chan bool, 1)}
		c.hub.register <- j
		if !<-j.result {
			bad = "Username is already taken"
		}
	}
	if bad != "" {
		c.reject(bad, chat.CloseBadJoin)
		return
	}
	registered = true
	c.conn.SetReadDeadline(time.Now().Add(pongWait))
	for {
		_, p, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		c.conn.SetReadDeadline(time.Now().Add(pongWait))
		content, bad := chat.Chat(p)
		switch {
		case bad != "":
			c.hub.direct <- direct{c, chat.Error(bad)}
		case content != "":
			c.hub.broadcast <- chat.Encode(name, content)
		}
	}
}

// reject ends a connection that never joined: the write pump sends the
// error (if any) and then the close frame. The client is not in the hub,
// so this goroutine owns send.
func (c *client) reject(errText string, code int) {
	if errText != "" {
		c.send <- chat.Error(errText)
	}
	c.closeCode = code
	close(c.send)
	// Give the write pump the time to write and close the connection.
	c.conn.SetReadDeadline(time.Now().Add(writeWait))
	for {
		if _, _, err := c.conn.NextReader(); err != nil {
			return
		}
	}
}

// writePump writes queued messages, one frame each, and pings.
func (c *client) writePump() {
	ticker := time.NewTicker(pingPeriod)
	defer func() {
		ticker.Stop()
		c.conn.Close()
	}()
	for {
		select {
		case m, ok := <-c.send:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if !ok {
				c.conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(c.closeCode, ""))
				return
			}
			if err := c.conn.WriteMessage(websocket.TextMessage, m); err != nil {
				return
			}
		case <-ticker.C:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if err := c.conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

// Start serves the chat on addr (/ws, /healthz) until stop is called.
func Start(addr string, presence bool) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	h := newHub(presence)
	go h.run()
	up := websocket.Upgrader{
		ReadBufferSize:  1024,
		WriteBufferSize: 1024,
		// Write buffers are taken from the pool only while a message is
		// written, not held by every idle connection.
		WriteBufferPool: &sync.Pool{},
		CheckOrigin:     func(*http.Request) bool { return true },
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		c := &client{hub: h, conn: conn, send: make(chan []byte, sendBuffer)}
		go c.writePump()
		go c.readPump()
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			panic(err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		close(h.done)
	}, nil
}
