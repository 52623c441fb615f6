// Package gwschat is the chat on lxzan/gws, as a comparison peer, used the
// way gws is fastest: its own acceptor (gws.Server parses the upgrade
// request without net/http), one read goroutine per connection (gws's
// model), and gws.Broadcaster, which frames a message once and queues the
// shared frame on every member's write queue, so the sender never waits
// on any receiver.
//
// ParallelEnabled is off on purpose: it runs a connection's OnMessage
// calls concurrently, which would reorder one sender's messages, and the
// protocol (and the bench, which counts out-of-order deliveries) requires
// per-sender order.
package gwschat

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"

	"gochat/bench/peers/chat"
	"gochat/bench/peers/internal/chatroom"
)

const (
	// sendQueue is the outbound bytes a member may have queued before it is
	// dropped as a slow consumer (gochat's default -send-queue).
	sendQueue = 1 << 20
	// markEvery: one write-queue marker per this many frames tracks how far
	// the member's writer has got (gws's Broadcaster has no callback).
	markEvery = 32
	joinWait  = 10 * time.Second
)

// member is a connection's state, installed as its gws session so the
// handlers reach it with a type assertion instead of a map lookup.
type member struct {
	chatroom.Member
	socket *gws.Conn

	enqueued atomic.Int64 // bytes queued for this member so far
	written  atomic.Int64 // bytes known written (advanced by markers)
	frames   atomic.Int64
}

// gws.SessionStorage, unused by the handlers but required by gws.
func (m *member) Len() int                           { return 0 }
func (m *member) Load(string) (any, bool)            { return nil, false }
func (m *member) Delete(string)                      {}
func (m *member) Store(string, any)                  {}
func (m *member) Range(func(key string, v any) bool) {}

// chatroom.Conn
func (m *member) Reject(errText string) {
	m.socket.WriteMessage(gws.OpcodeText, chat.Error(errText))
	m.socket.WriteClose(chat.CloseBadJoin, nil)
}
func (m *member) SetReadDeadline(t time.Time) error { return m.socket.SetReadDeadline(t) }
func (m *member) SendError(errText string) {
	m.socket.WriteAsync(gws.OpcodeText, chat.Error(errText), nil)
}

// publish frames payload once and queues it for every member.
func publish(members []*member, payload []byte) {
	b := gws.NewBroadcaster(gws.OpcodeText, payload)
	n := int64(len(payload) + 4)
	for _, m := range members {
		q := m.enqueued.Add(n)
		if q-m.written.Load() > sendQueue {
			m.socket.NetConn().Close() // slow consumer: the read loop ends and OnClose removes it
			continue
		}
		_ = b.Broadcast(m.socket)
		if m.frames.Add(1)%markEvery == 0 {
			m.socket.Async(func() { advance(&m.written, q) })
		}
	}
	_ = b.Close()
}

func advance(v *atomic.Int64, to int64) {
	for {
		cur := v.Load()
		if to <= cur || v.CompareAndSwap(cur, to) {
			return
		}
	}
}

type handler struct {
	gws.BuiltinEventHandler
	room *chatroom.Room[*member]
}

func (h *handler) OnOpen(socket *gws.Conn) {
	socket.Session().(*member).socket = socket
	socket.SetReadDeadline(time.Now().Add(joinWait))
}

func (h *handler) OnClose(socket *gws.Conn, err error) {
	h.room.Close(socket.Session().(*member))
}

func (h *handler) OnMessage(socket *gws.Conn, msg *gws.Message) {
	defer msg.Close()
	h.room.Message(socket.Session().(*member), msg.Bytes())
}

// Start serves the chat on addr (/ws, /healthz) until stop is called.
// The accept loop is gws.Server.RunListener's (a goroutine per connection
// reads the upgrade request with net/http's parser, without net/http's
// server), plus the two other routes and a way to stop.
func Start(addr string, presence bool) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	h := &handler{room: chatroom.New(presence, publish)}
	up := gws.NewUpgrader(h, &gws.ServerOption{
		ReadMaxPayloadSize: chat.MaxMessage,
		CheckUtf8Enabled:   true,
		NewSession:         func() gws.SessionStorage { return &member{} },
	})
	serve := func(conn net.Conn) {
		br := bufio.NewReaderSize(conn, 4096)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		r, err := http.ReadRequest(br)
		if err != nil {
			conn.Close()
			return
		}
		conn.SetReadDeadline(time.Time{})
		switch r.URL.Path {
		case "/ws":
			if socket, err := up.UpgradeFromConn(conn, br, r); err == nil {
				socket.ReadLoop()
			}
		case "/healthz":
			conn.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"))
			conn.Close()
		default:
			conn.Write([]byte("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			conn.Close()
		}
	}
	go func() {
		for {
			conn, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				time.Sleep(5 * time.Millisecond) // EMFILE and friends
				continue
			}
			go serve(conn)
		}
	}()
	return func() { ln.Close() }, nil
}
