package server

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// startNATS runs an embedded nats-server (no JetStream) on 127.0.0.1; port
// -1 picks a free one. It is shut down, and waited for, when the test ends.
func startNATS(t testing.TB, port int) *natsserver.Server {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: port, NoLog: true, NoSigs: true})
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

// startNode starts a gochat node relaying through natsURL.
func startNode(t testing.TB, natsURL string, cfg Config) *testServer {
	t.Helper()
	cfg.NATS = natsURL
	s := startServer(t, cfg)
	waitUntil(t, "node connected to NATS", s.cluster.nc.IsConnected)
	// A round trip: the server has registered the subscription.
	if err := s.cluster.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitReceived waits until s has received n records from other nodes.
func waitReceived(t testing.TB, s *testServer, n float64) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%v records from other nodes", n), func() bool {
		return testutil.ToFloat64(s.cluster.received) >= n
	})
}

// nextIs reads the next message and requires it to be want: nothing
// (no duplicate, no stray notice) may come in between.
func (c *client) nextIs(want chatMsg) {
	c.t.Helper()
	if got := c.read(); got != want {
		c.t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestClusterRelay(t *testing.T) {
	ns := startNATS(t, -1)
	a := startNode(t, ns.ClientURL(), Config{})
	b := startNode(t, ns.ClientURL(), Config{})

	bob := join(t, b.url, "bob")
	waitReceived(t, a, 1) // "bob joined" reached A before alice is there
	alice := join(t, a.url, "alice")
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
	if got := testutil.ToFloat64(a.cluster.received); got != 3 {
		t.Errorf("A received %v records, want 3", got)
	}
	if got := testutil.ToFloat64(b.cluster.received); got != 3 {
		t.Errorf("B received %v records, want 3", got)
	}

	// Leave notices cross nodes too, exactly once.
	alice.conn.Close(websocket.StatusNormalClosure, "")
	bob.nextIs(chatMsg{"System", "alice left the chat"})
	bob.send(`{"content":"alone"}`)
	bob.nextIs(chatMsg{"bob", "alone"})

	if got := testutil.ToFloat64(a.cluster.publishErrors) + testutil.ToFloat64(b.cluster.publishErrors); got != 0 {
		t.Errorf("publish errors: %v", got)
	}
}

// Two senders on two nodes, 200 messages each, interleaved: every receiver
// on both nodes sees each sender's messages exactly once, in send order.
func TestClusterOrder(t *testing.T) {
	const n = 200
	ns := startNATS(t, -1)
	cfg := Config{Rate: 1e5, Burst: 1e5}
	a := startNode(t, ns.ClientURL(), cfg)
	b := startNode(t, ns.ClientURL(), cfg)

	alice := join(t, a.url, "alice")
	waitReceived(t, b, 1)
	bob := join(t, b.url, "bob")
	alice.waitFor(chatMsg{"System", "bob joined the chat"})
	carol := join(t, a.url, "carol") // a silent receiver on A
	bob.waitFor(chatMsg{"System", "carol joined the chat"})
	alice.waitFor(chatMsg{"System", "carol joined the chat"})

	for i := range n {
		alice.send(fmt.Sprintf(`{"content":"a%03d"}`, i))
		bob.send(fmt.Sprintf(`{"content":"b%03d"}`, i))
	}
	for _, rc := range []struct {
		name string
		c    *client
	}{{"alice", alice}, {"bob", bob}, {"carol", carol}} {
		next := map[string]int{"alice": 0, "bob": 0}
		for got := 0; got < 2*n; got++ {
			m := rc.c.read()
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
	ns := startNATS(t, -1)
	port := ns.Addr().(*net.TCPAddr).Port
	a := startNode(t, ns.ClientURL(), Config{})
	b := startNode(t, ns.ClientURL(), Config{})
	alice := join(t, a.url, "alice")
	waitReceived(t, b, 1)
	bob := join(t, b.url, "bob")
	alice.nextIs(chatMsg{"System", "bob joined the chat"})

	stopNATS(ns)
	waitUntil(t, "nodes see NATS down", func() bool {
		return !a.cluster.nc.IsConnected() && !b.cluster.nc.IsConnected()
	})
	alice.send(`{"content":"still here"}`)
	alice.nextIs(chatMsg{"alice", "still here"})
	carol := join(t, a.url, "carol")
	alice.nextIs(chatMsg{"System", "carol joined the chat"})
	carol.send(`{"content":"hi alice"}`)
	carol.nextIs(chatMsg{"carol", "hi alice"})
	alice.nextIs(chatMsg{"carol", "hi alice"})
	bob.send(`{"content":"B alone"}`)
	bob.nextIs(chatMsg{"bob", "B alone"})

	// NATS back on the same port: both nodes reconnect and relay again.
	startNATS(t, port)
	for _, s := range []*testServer{a, b} {
		waitUntil(t, "node reconnected", s.cluster.nc.IsConnected)
		if err := s.cluster.nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	alice.send(`{"content":"back"}`)
	bob.waitFor(chatMsg{"alice", "back"}) // messages buffered in the outage may come first
	bob.send(`{"content":"welcome back"}`)
	alice.waitFor(chatMsg{"bob", "welcome back"})
}

// NATS unreachable from the start: New still succeeds (the client keeps
// retrying), local chat works, and relays beyond the client's reconnect
// buffer are counted as publish errors.
func TestClusterNATSUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://" + ln.Addr().String()
	ln.Close() // nothing listens there now

	s := startServer(t, Config{NATS: url})
	alice := join(t, s.url, "alice")
	alice.send(`{"content":"local only"}`)
	alice.nextIs(chatMsg{"alice", "local only"})

	content := []byte(strings.Repeat("x", 8<<10))
	for range 2 * reconnectBuf / len(content) {
		s.cluster.publish("alice", content)
	}
	waitUntil(t, "publish errors counted", func() bool {
		return testutil.ToFloat64(s.cluster.publishErrors) > 0
	})
	sc, err := promFetch(t, http.DefaultClient, s.base)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"gochat_cluster_publish_errors_total", "gochat_cluster_received_total", "gochat_cluster_connected"} {
		if _, ok := sc.fams[name]; !ok {
			t.Errorf("metric %s missing", name)
		}
	}
}

// A node drops what it published itself should NATS ever echo it, and
// malformed payloads; the rest goes to local members only.
func TestClusterOwnAndMalformed(t *testing.T) {
	ns := startNATS(t, -1)
	s := startNode(t, ns.ClientURL(), Config{})
	alice := join(t, s.url, "alice")

	msg := func(id [8]byte, name, content string) *nats.Msg {
		d := append([]byte{relayVersion}, id[:]...)
		return &nats.Msg{Data: appendRecord(d, name, []byte(content))}
	}
	other := s.cluster.id
	other[0] ^= 0xff
	s.cluster.onMsg(msg(s.cluster.id, "mallory", "echo"))        // own: ignored
	s.cluster.onMsg(&nats.Msg{Data: []byte{relayVersion, 1, 2}}) // short
	bad := msg(other, "eve", "x")
	bad.Data = bad.Data[:len(bad.Data)-1] // truncated record
	s.cluster.onMsg(bad)
	s.cluster.onMsg(msg(other, "bob", "from elsewhere"))
	alice.nextIs(chatMsg{"bob", "from elsewhere"})
	if got := testutil.ToFloat64(s.cluster.received); got != 1 {
		t.Errorf("received %v, want 1", got)
	}
	if got := testutil.ToFloat64(s.cluster.dropped); got != 2 {
		t.Errorf("dropped %v, want 2", got)
	}
}

func TestClusterConfig(t *testing.T) {
	t.Setenv(EnvName("nats"), "nats://127.0.0.1:4222")
	fs := flag.NewFlagSet("gochat", flag.ContinueOnError)
	var cfg Config
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"-nats-subject", "chat.lobby"}); err != nil {
		t.Fatal(err)
	}
	if err := ApplyEnv(fs); err != nil {
		t.Fatal(err)
	}
	if cfg.NATS != "nats://127.0.0.1:4222" || cfg.NATSSubject != "chat.lobby" {
		t.Fatalf("got NATS %q subject %q", cfg.NATS, cfg.NATSSubject)
	}
	if d := (Config{}).Defaults(); d.NATS != "" || d.NATSSubject != DefaultNATSSubject {
		t.Fatalf("defaults: %q %q", d.NATS, d.NATSSubject)
	}
	for _, subj := range []string{"gochat.*", "gochat.>", "a..b", "a b", "."} {
		c := Config{NATS: "nats://127.0.0.1:4222", NATSSubject: subj}.Defaults()
		if c.Validate() == nil {
			t.Errorf("subject %q accepted", subj)
		}
	}
	if got := redactURL("nats://u:p@h1:4222,nats://h2:4222"); got != "nats://[redacted]@h1:4222,nats://h2:4222" {
		t.Errorf("redactURL: %s", got)
	}
}
