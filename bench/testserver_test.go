package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// testServer is a small, deliberately misbehaving chat server speaking the
// gochat protocol. All its decisions are made under one mutex, in broadcast
// order, and counted, so a test can compare the harness's figures with
// what the server really did.
type testServer struct {
	// presence broadcasts "X joined the chat" to every registered client.
	presence bool
	// dropEvery > 0 drops every dropEvery-th measured broadcast for the
	// receivers whose bench id is odd.
	dropEvery int
	// noticeDropEvery > 0 drops every noticeDropEvery-th delivery of
	// another client's join notice.
	noticeDropEvery int
	// victim >= 0 is the bench id of a client closed with 1008 after
	// closeAfter measured broadcasts.
	victim, closeAfter int
	// queue is each client's outbound queue in messages; a client whose
	// queue is full is a slow consumer and gets dropped (0 = 4096).
	queue int
	// slowFrom > 0 gives queue only to bench ids >= slowFrom (the clients
	// that never read); the others get 4096, so a slow -race run cannot
	// make a reading client overflow.
	slowFrom int
	// linger > 0 keeps an evicted slow consumer's socket open that long
	// before closing it, like gochat's -close-linger.
	linger time.Duration
	// evictSlowAt > 0 evicts every client with bench id >= slowFrom as a
	// slow consumer when the evictSlowAt-th measured message arrives.
	evictSlowAt int
	// maxConns > 0 answers upgrades past that many open connections with
	// 503, like gochat's -max-conns.
	maxConns int
	// sndbuf > 0 sets SO_SNDBUF on accepted connections so that clients
	// that do not read back up quickly.
	sndbuf int
	// nodes > 1 serves the one chat on that many listeners (urls()), like
	// a cluster whose relay loses nothing unless told to.
	nodes int
	// nodeDropEvery > 0 drops every nodeDropEvery-th measured message for
	// every client of node dropNode, as a relay losing it on its way to
	// that node would; nodeDropCounted has that node's /metrics count them
	// in gochat_cluster_receive_drops_total.
	nodeDropEvery, dropNode int
	nodeDropCounted         bool
	// dupEvery > 0 sends every dupEvery-th measured message twice.
	dupEvery int

	srv   *httptest.Server
	extra []*httptest.Server // nodes 1..
	hosts map[string]int     // listener host:port -> node
	ctx   context.Context

	mu             sync.Mutex
	open           int // upgraded connections, for maxConns
	clients        []*tsClient
	measured       int // measured broadcasts
	droppedAlive   int // measured messages dropped for clients never closed
	noticesDropped int
	slowDropped    map[int]bool // bench ids dropped as slow consumers
	nodeDrops      []int        // per node: measured messages dropped for all its clients
	dupDeliveries  int          // second copies sent
}

type tsClient struct {
	id     int // bench id, from the username
	node   int // the listener it came through
	name   string
	conn   *websocket.Conn
	out    chan []byte // nil entry: close with 1008
	closed bool
}

func startTestServer(t *testing.T, ts *testServer) *testServer {
	t.Helper()
	if ts.queue == 0 {
		ts.queue = 4096
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts.ctx = ctx
	ts.srv = httptest.NewUnstartedServer(http.HandlerFunc(ts.serveWS))
	if ts.sndbuf > 0 {
		ts.srv.Listener = sndbufListener{ts.srv.Listener, ts.sndbuf}
	}
	ts.srv.Start()
	ts.hosts = map[string]int{ts.srv.Listener.Addr().String(): 0}
	for i := 1; i < ts.nodes; i++ {
		x := httptest.NewServer(http.HandlerFunc(ts.serveWS))
		ts.hosts[x.Listener.Addr().String()] = i
		ts.extra = append(ts.extra, x)
	}
	ts.nodeDrops = make([]int, max(ts.nodes, 1))
	t.Cleanup(func() {
		cancel()
		ts.srv.Close()
		for _, x := range ts.extra {
			x.Close()
		}
	})
	return ts
}

func (ts *testServer) url() string {
	return "ws" + strings.TrimPrefix(ts.srv.URL, "http") + "/ws"
}

// urls is every node's WebSocket URL.
func (ts *testServer) urls() []string {
	out := []string{ts.url()}
	for _, x := range ts.extra {
		out = append(out, "ws"+strings.TrimPrefix(x.URL, "http")+"/ws")
	}
	return out
}

type sndbufListener struct {
	net.Listener
	size int
}

func (l sndbufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(l.size)
	}
	return c, err
}

type inMsg struct {
	Username string `json:"username"`
	Content  string `json:"content"`
}

func (ts *testServer) serveWS(w http.ResponseWriter, r *http.Request) {
	node := ts.hosts[r.Host]
	if r.URL.Path == "/metrics" {
		ts.mu.Lock()
		fmt.Fprintf(w, "# TYPE gochat_slow_consumer_disconnects_total counter\ngochat_slow_consumer_disconnects_total %d\n", len(ts.slowDropped))
		if ts.nodes > 1 {
			drops := 0
			if ts.nodeDropCounted {
				drops = ts.nodeDrops[node]
			}
			fmt.Fprintf(w, "gochat_cluster_receive_drops_total %d\ngochat_cluster_publish_errors_total 0\ngochat_cluster_connected 1\n", drops)
		}
		ts.mu.Unlock()
		return
	}
	ts.mu.Lock()
	full := ts.maxConns > 0 && ts.open >= ts.maxConns
	if !full {
		ts.open++
	}
	ts.mu.Unlock()
	if full {
		http.Error(w, "too many connections", http.StatusServiceUnavailable)
		return
	}
	defer func() {
		ts.mu.Lock()
		ts.open--
		ts.mu.Unlock()
	}()
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx := ts.ctx
	_, data, err := conn.Read(ctx)
	var join inMsg
	if err != nil || json.Unmarshal(data, &join) != nil || join.Username == "" {
		conn.Close(websocket.StatusPolicyViolation, "bad join")
		return
	}
	id := -1
	if _, num, ok := strings.Cut(join.Username, "_"); ok {
		id, _ = strconv.Atoi(num)
	}
	q := ts.queue
	if ts.slowFrom > 0 && id < ts.slowFrom {
		q = 4096
	}
	c := &tsClient{id: id, node: node, name: join.Username, conn: conn, out: make(chan []byte, q)}
	go ts.writeLoop(ctx, c)

	ts.mu.Lock()
	ts.clients = append(ts.clients, c)
	if ts.presence {
		ts.broadcastLocked(c, join.Username+" joined the chat", "System")
	}
	ts.mu.Unlock()

	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			break
		}
		var m inMsg
		if json.Unmarshal(data, &m) == nil && m.Content != "" {
			ts.mu.Lock()
			ts.broadcastLocked(c, m.Content, join.Username)
			ts.mu.Unlock()
		}
	}
	ts.mu.Lock()
	c.closed = true
	ts.mu.Unlock()
	conn.CloseNow()
}

// broadcastLocked sends one message to every registered client, applying
// the configured faults. ts.mu is held.
func (ts *testServer) broadcastLocked(from *tsClient, content, user string) {
	msg, _ := json.Marshal(inMsg{Username: user, Content: content})
	measured := len(content) > offKind && content[0] == '~' && content[offKind] == kindMeasured
	if measured {
		ts.measured++
		if ts.evictSlowAt > 0 && ts.measured == ts.evictSlowAt {
			for _, c := range ts.clients {
				if !c.closed && c.id >= ts.slowFrom {
					ts.evictLocked(c)
				}
			}
		}
	}
	notice := user == "System"
	deliveries := 0
	nodeDrop := measured && ts.nodeDropEvery > 0 && ts.measured%ts.nodeDropEvery == 0
	if nodeDrop {
		ts.nodeDrops[ts.dropNode]++
	}
	dup := measured && ts.dupEvery > 0 && ts.measured%ts.dupEvery == 0
	for _, c := range ts.clients {
		if c.closed || (nodeDrop && c.node == ts.dropNode) {
			continue
		}
		if dup {
			select {
			case c.out <- msg:
				ts.dupDeliveries++
			default:
			}
		}
		if measured && ts.dropEvery > 0 && ts.measured%ts.dropEvery == 0 && c.id%2 == 1 {
			if c.id != ts.victim {
				ts.droppedAlive++
			}
			continue
		}
		if notice && c != from && ts.noticeDropEvery > 0 {
			deliveries++
			if deliveries%ts.noticeDropEvery == 0 {
				ts.noticesDropped++
				continue
			}
		}
		select {
		case c.out <- msg:
		default:
			// Slow consumer: drop it without waiting on it.
			ts.evictLocked(c)
		}
	}
	if measured && ts.measured == ts.closeAfter {
		for _, c := range ts.clients {
			if c.id == ts.victim && !c.closed {
				c.closed = true
				select {
				case c.out <- nil:
				default:
					c.conn.CloseNow()
				}
			}
		}
	}
}

// evictLocked drops c as a slow consumer: no more messages, and its socket
// closed now or after ts.linger. ts.mu is held.
func (ts *testServer) evictLocked(c *tsClient) {
	c.closed = true
	if ts.slowDropped == nil {
		ts.slowDropped = map[int]bool{}
	}
	ts.slowDropped[c.id] = true
	if ts.linger > 0 {
		time.AfterFunc(ts.linger, func() { c.conn.CloseNow() })
		return
	}
	c.conn.CloseNow()
}

func (ts *testServer) writeLoop(ctx context.Context, c *tsClient) {
	for {
		select {
		case <-ctx.Done():
			return
		case msg := <-c.out:
			if msg == nil {
				c.conn.Close(websocket.StatusPolicyViolation, "closed by test")
				return
			}
			if c.conn.Write(ctx, websocket.MessageText, msg) != nil {
				return
			}
		}
	}
}

// counters returns the server's fault counts.
func (ts *testServer) counters() (measured, droppedAlive, noticesDropped int) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.measured, ts.droppedAlive, ts.noticesDropped
}

// slowConsumers counts the clients dropped as slow consumers whose bench
// id satisfies pick.
func (ts *testServer) slowConsumers(pick func(id int) bool) int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	n := 0
	for id := range ts.slowDropped {
		if pick(id) {
			n++
		}
	}
	return n
}
