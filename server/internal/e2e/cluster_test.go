package e2e

// Several gochat nodes sharing one chat through NATS (server/cluster.go),
// tested from outside: in-process servers from server.New against an
// embedded nats-server, driven with coder/websocket over real sockets, and
// observed through what clients receive, /metrics, the nats-server's own
// view of its connections, and the server's log.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"gochat/server"
)

// clusterWait bounds the waits on a node's NATS state: a hang bound only.
const clusterWait = 20 * time.Second

// Relay wire format (server/internal/natsrelay): a version byte, the
// publisher's 8-byte node id, then records of uvarint(len(room)) room
// uvarint(len(name)) name uvarint(len(content)) content.
const relayVersion = 2

func relayRecord(dst []byte, name, content string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len("lobby")))
	dst = append(dst, "lobby"...)
	dst = binary.AppendUvarint(dst, uint64(len(name)))
	dst = append(dst, name...)
	dst = binary.AppendUvarint(dst, uint64(len(content)))
	return append(dst, content...)
}

// checkLeaks fails the test if it leaves goroutines behind (servers, NATS
// clients, the embedded nats-server), as server's TestMain checked for the
// in-package cluster tests. Call it first: its cleanup then runs last.
func checkLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// startNATS runs an embedded nats-server (no JetStream) on 127.0.0.1; port
// -1 picks a free one. It is shut down, and waited for, when the test ends.
func startNATS(t testing.TB, port int) *natsserver.Server {
	t.Helper()
	return startNATSWith(t, &natsserver.Options{Port: port})
}

// startNATSWith is startNATS with o's settings (authorization, TLS);
// o.Port 0 picks a free one.
func startNATSWith(t testing.TB, o *natsserver.Options) *natsserver.Server {
	t.Helper()
	o.Host, o.NoLog, o.NoSigs = "127.0.0.1", true, true
	if o.Port == 0 {
		o.Port = -1
	}
	ns, err := natsserver.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	if !ns.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	return ns
}

// stopNATS shuts the embedded server down now.
func stopNATS(ns *natsserver.Server) {
	ns.Shutdown()
	ns.WaitForShutdown()
}

// node is an in-process gochat on a free loopback port.
type node struct {
	*server.Server
	url  string // ws://127.0.0.1:PORT/ws
	base string // http://127.0.0.1:PORT
	log  *lockedBuffer
}

// startServer starts server.New(cfg) (Addr forced to a free loopback port),
// logging JSON into a buffer shown on failure, and shuts it down when the
// test ends.
func startServer(t testing.TB, cfg server.Config) *node {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	logs := &lockedBuffer{}
	s, err := server.New(cfg, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if t.Failed() {
			t.Logf("node %s log:\n%s", s.Addr(), logs)
		}
	})
	addr := s.Addr().String()
	return &node{Server: s, url: "ws://" + addr + "/ws", base: "http://" + addr, log: logs}
}

// gochatNodes returns the NATS connections of gochat nodes (named
// "gochat-<node id>") that have subscribed, by node id.
func gochatNodes(t testing.TB, ns *natsserver.Server) map[string]bool {
	t.Helper()
	cz, err := ns.Connz(&natsserver.ConnzOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, c := range cz.Conns {
		if id, ok := strings.CutPrefix(c.Name, "gochat-"); ok && c.NumSubs > 0 {
			ids[id] = true
		}
	}
	return ids
}

// waitNodes waits until n gochat nodes are connected to ns with their
// subscription registered (what connected + Flush showed in-package).
func waitNodes(t testing.TB, ns *natsserver.Server, n int) map[string]bool {
	t.Helper()
	var ids map[string]bool
	eventually(t, clusterWait, fmt.Sprintf("%d nodes subscribed on nats-server", n), func() bool {
		ids = gochatNodes(t, ns)
		return len(ids) == n
	})
	return ids
}

// startNode starts a gochat node relaying through ns and waits until it is
// connected and subscribed; it returns the node and its node id.
func startNode(t testing.TB, ns *natsserver.Server, cfg server.Config) (*node, string) {
	t.Helper()
	before := gochatNodes(t, ns)
	cfg.NATS = ns.ClientURL()
	s := startServer(t, cfg)
	ids := waitNodes(t, ns, len(before)+1)
	eventually(t, clusterWait, "node reports NATS connected", func() bool {
		return metric(t, s.base, "gochat_cluster_connected") == 1
	})
	for id := range ids {
		if !before[id] {
			return s, id
		}
	}
	t.Fatal("new node not found on nats-server")
	return nil, ""
}

// waitReceived waits until s has received n records from other nodes.
func waitReceived(t testing.TB, s *node, n float64) {
	t.Helper()
	eventually(t, clusterWait, fmt.Sprintf("%v records from other nodes", n), func() bool {
		return metric(t, s.base, "gochat_cluster_received_total") >= n
	})
}

func TestClusterRelay(t *testing.T) {
	checkLeaks(t)
	ns := startNATS(t, -1)
	a, _ := startNode(t, ns, server.Config{})
	b, _ := startNode(t, ns, server.Config{})

	bob := joinChat(t, b.url, "bob")
	waitReceived(t, a, 1) // "bob joined" reached A before alice is there
	alice := joinChat(t, a.url, "alice")
	bob.nextIs(chatMsg{"System", "alice joined the chat"})

	// alice on A -> bob on B, and alice herself exactly once.
	alice.send(`{"content":"hello from A"}`)
	alice.nextIs(chatMsg{"alice", "hello from A"})
	bob.nextIs(chatMsg{"alice", "hello from A"})

	// bob on B -> alice on A.
	bob.send(`{"content":"hi from B"}`)
	bob.nextIs(chatMsg{"bob", "hi from B"})
	alice.nextIs(chatMsg{"bob", "hi from B"})

	// Sentinels from both sides: nothing (no echo of a node's own message
	// coming back through NATS) slipped in between.
	alice.send(`{"content":"end A"}`)
	alice.nextIs(chatMsg{"alice", "end A"})
	bob.nextIs(chatMsg{"alice", "end A"})
	bob.send(`{"content":"end B"}`)
	bob.nextIs(chatMsg{"bob", "end B"})
	alice.nextIs(chatMsg{"bob", "end B"})

	// Each node received exactly what the other one published.
	waitReceived(t, b, 3) // alice joined, hello, end A
	waitReceived(t, a, 3) // bob joined, hi, end B
	if got := metric(t, a.base, "gochat_cluster_received_total"); got != 3 {
		t.Errorf("A received %v records, want 3", got)
	}
	if got := metric(t, b.base, "gochat_cluster_received_total"); got != 3 {
		t.Errorf("B received %v records, want 3", got)
	}

	// Leave notices cross nodes too, exactly once.
	alice.close()
	bob.nextIs(chatMsg{"System", "alice left the chat"})
	bob.send(`{"content":"alone"}`)
	bob.nextIs(chatMsg{"bob", "alone"})

	if got := metric(t, a.base, "gochat_cluster_publish_errors_total") + metric(t, b.base, "gochat_cluster_publish_errors_total"); got != 0 {
		t.Errorf("publish errors: %v", got)
	}
}

// Two senders on two nodes, 200 messages each, interleaved: every receiver
// on both nodes sees each sender's messages exactly once, in send order.
func TestClusterOrder(t *testing.T) {
	checkLeaks(t)
	const n = 200
	ns := startNATS(t, -1)
	cfg := server.Config{Rate: 1e5, Burst: 1e5}
	a, _ := startNode(t, ns, cfg)
	b, _ := startNode(t, ns, cfg)

	alice := joinChat(t, a.url, "alice")
	waitReceived(t, b, 1)
	bob := joinChat(t, b.url, "bob")
	alice.waitFor(chatMsg{"System", "bob joined the chat"})
	carol := joinChat(t, a.url, "carol") // a silent receiver on A
	bob.waitFor(chatMsg{"System", "carol joined the chat"})
	alice.waitFor(chatMsg{"System", "carol joined the chat"})

	for i := range n {
		alice.send(fmt.Sprintf(`{"content":"a%03d"}`, i))
		bob.send(fmt.Sprintf(`{"content":"b%03d"}`, i))
	}
	for _, rc := range []struct {
		name string
		c    *chatClient
	}{{"alice", alice}, {"bob", bob}, {"carol", carol}} {
		next := map[string]int{"alice": 0, "bob": 0}
		for got := 0; got < 2*n; got++ {
			m := rc.c.next()
			want, ok := next[m.Username]
			if !ok {
				t.Fatalf("%s: unexpected %+v", rc.name, m)
			}
			if exp := fmt.Sprintf("%c%03d", m.Username[0], want); m.Content != exp {
				t.Fatalf("%s: from %s got %q, want %q (order broken or duplicate)", rc.name, m.Username, m.Content, exp)
			}
			next[m.Username]++
		}
		if next["alice"] != n || next["bob"] != n {
			t.Fatalf("%s: got %v", rc.name, next)
		}
	}
}

// With NATS down, each node's own chat keeps working (joins, messages);
// when NATS is back, the nodes reconnect and share the chat again.
func TestClusterNATSDown(t *testing.T) {
	checkLeaks(t)
	ns := startNATS(t, -1)
	port := ns.Addr().(*net.TCPAddr).Port
	a, _ := startNode(t, ns, server.Config{})
	b, _ := startNode(t, ns, server.Config{})
	alice := joinChat(t, a.url, "alice")
	waitReceived(t, b, 1)
	bob := joinChat(t, b.url, "bob")
	alice.nextIs(chatMsg{"System", "bob joined the chat"})

	stopNATS(ns)
	eventually(t, clusterWait, "nodes see NATS down", func() bool {
		return metric(t, a.base, "gochat_cluster_connected") == 0 && metric(t, b.base, "gochat_cluster_connected") == 0
	})
	alice.send(`{"content":"still here"}`)
	alice.nextIs(chatMsg{"alice", "still here"})
	carol := joinChat(t, a.url, "carol")
	alice.nextIs(chatMsg{"System", "carol joined the chat"})
	carol.send(`{"content":"hi alice"}`)
	carol.nextIs(chatMsg{"carol", "hi alice"})
	alice.nextIs(chatMsg{"carol", "hi alice"})
	bob.send(`{"content":"B alone"}`)
	bob.nextIs(chatMsg{"bob", "B alone"})

	// NATS back on the same port: both nodes reconnect and relay again.
	ns = startNATS(t, port)
	waitNodes(t, ns, 2)
	for _, s := range []*node{a, b} {
		eventually(t, clusterWait, "node reconnected", func() bool {
			return metric(t, s.base, "gochat_cluster_connected") == 1
		})
	}
	alice.send(`{"content":"back"}`)
	bob.waitFor(chatMsg{"alice", "back"}) // messages buffered in the outage may come first
	bob.send(`{"content":"welcome back"}`)
	alice.waitFor(chatMsg{"bob", "welcome back"})
}

// NATS unreachable from the start: New still succeeds (the client keeps
// retrying), local chat works, and relays beyond the client's reconnect
// buffer (1 MiB) are counted as publish errors.
func TestClusterNATSUnreachable(t *testing.T) {
	checkLeaks(t)
	url := "nats://" + freeLoopbackAddr(t) // nothing listens there now

	const size = 8 << 10
	s := startServer(t, server.Config{NATS: url, Rate: 1e5, Burst: 1e5, MaxContent: size, MaxMessage: 2 * size, SendQueue: 16 << 20})
	alice := joinChat(t, s.url, "alice")
	alice.send(`{"content":"local only"}`)
	alice.nextIs(chatMsg{"alice", "local only"})

	// In-package, the test queued 2 MiB of records on the relay directly;
	// from outside, alice sends them as chat messages.
	content := strings.Repeat("x", size)
	for range 2 * (1 << 20) / size {
		alice.send(fmt.Sprintf(`{"content":%q}`, content))
	}
	eventually(t, clusterWait, "publish errors counted", func() bool {
		return metric(t, s.base, "gochat_cluster_publish_errors_total") > 0
	})
	series, err := scrape(t, s.base)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"gochat_cluster_publish_errors_total", "gochat_cluster_received_total", "gochat_cluster_connected"} {
		if _, ok := series[name]; !ok {
			t.Errorf("metric %s missing", name)
		}
	}
}

// A node drops what it published itself should NATS ever echo it, and
// malformed payloads; the rest goes to local members only.
func TestClusterOwnAndMalformed(t *testing.T) {
	checkLeaks(t)
	ns := startNATS(t, -1)
	s, idHex := startNode(t, ns, server.Config{})
	alice := joinChat(t, s.url, "alice")

	// The node's id is in the name of its NATS connection.
	id, err := hex.DecodeString(idHex)
	if err != nil || len(id) != 8 {
		t.Fatalf("node connection name gochat-%s does not carry an 8-byte id", idHex)
	}
	other := bytes.Clone(id)
	other[0] ^= 0xff
	msg := func(id []byte, name, content string) []byte {
		d := append([]byte{relayVersion}, id...)
		return relayRecord(d, name, content)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	pub := func(data []byte) {
		t.Helper()
		if err := nc.Publish(server.DefaultNATSSubject, data); err != nil {
			t.Fatal(err)
		}
	}
	pub(msg(id, "mallory", "echo")) // own: ignored
	pub([]byte{relayVersion, 1, 2}) // short
	bad := msg(other, "eve", "x")
	pub(bad[:len(bad)-1]) // truncated record
	pub(msg(other, "bob", "from elsewhere"))
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	alice.nextIs(chatMsg{"bob", "from elsewhere"})
	// The counters move just after the delivery.
	eventually(t, clusterWait, "received 1, dropped 2", func() bool {
		return metric(t, s.base, "gochat_cluster_received_total") == 1 &&
			metric(t, s.base, "gochat_cluster_receive_drops_total") == 2
	})
	alice.marker() // nothing else was delivered in the meantime
	if h := alice.history(); len(h) != 3 {
		t.Errorf("alice received %+v, want her join, bob's message and her marker", h)
	}
	if got := metric(t, s.base, "gochat_cluster_received_total"); got != 1 {
		t.Errorf("received %v, want 1", got)
	}
	if got := metric(t, s.base, "gochat_cluster_receive_drops_total"); got != 2 {
		t.Errorf("dropped %v, want 2", got)
	}
}

func TestClusterConfig(t *testing.T) {
	checkLeaks(t)
	t.Setenv(server.EnvName("nats"), "nats://127.0.0.1:4222")
	fs := flag.NewFlagSet("gochat", flag.ContinueOnError)
	var cfg server.Config
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"-nats-subject", "chat.lobby"}); err != nil {
		t.Fatal(err)
	}
	if err := server.ApplyEnv(fs); err != nil {
		t.Fatal(err)
	}
	if cfg.NATS != "nats://127.0.0.1:4222" || cfg.NATSSubject != "chat.lobby" {
		t.Fatalf("got NATS %q subject %q", cfg.NATS, cfg.NATSSubject)
	}
	if d := (server.Config{}).Defaults(); d.NATS != "" || d.NATSSubject != server.DefaultNATSSubject {
		t.Fatalf("defaults: %q %q", d.NATS, d.NATSSubject)
	}
	for _, subj := range []string{"gochat.*", "gochat.>", "a..b", "a b", "."} {
		c := server.Config{NATS: "nats://127.0.0.1:4222", NATSSubject: subj}.Defaults()
		if c.Validate() == nil {
			t.Errorf("subject %q accepted", subj)
		}
	}

	// Credentials in the NATS URLs never reach the log (in-package this
	// called redactURL; from outside, a node whose NATS is not reachable
	// logs the URLs it keeps trying).
	h1, h2 := freeLoopbackAddr(t), freeLoopbackAddr(t)
	s := startServer(t, server.Config{NATS: "nats://u:p@" + h1 + ",nats://" + h2})
	want := `"url":"nats://[redacted]@` + h1 + `,nats://` + h2 + `"`
	eventually(t, clusterWait, "the unreachable NATS URLs logged", func() bool {
		return strings.Contains(s.log.String(), "nats not reachable yet")
	})
	logs := s.log.String()
	if !strings.Contains(logs, want) {
		t.Errorf("log lacks %s:\n%s", want, logs)
	}
	if strings.Contains(logs, "u:p@") {
		t.Errorf("credentials in the log:\n%s", logs)
	}
}
