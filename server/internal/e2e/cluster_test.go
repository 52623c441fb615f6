package e2e

// Several gochat nodes sharing one chat through NATS (server/cluster.go),
// tested from outside: in-process servers from server.New against an
// embedded nats-server, driven with coder/websocket over real sockets, and
// observed through what clients receive, /metrics, the nats-server's own
// view of its connections, and the server's log.

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"gochat/server"
)

// clusterWait bounds the waits on a node's NATS state: a hang bound only.
const clusterWait = 20 * time.Second

// checkLeaks fails the test if it leaves goroutines behind (servers, NATS
// clients, the embedded nats-server), as server's TestMain checked for the
// in-package cluster tests. Call it first: its cleanup then runs last.
func checkLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// startNATS runs an embedded nats-server with JetStream (file store in a
// temp dir) on 127.0.0.1; port -1 picks a free one. It is shut down, and
// waited for, when the test ends.
func startNATS(t testing.TB, port int) *natsserver.Server {
	t.Helper()
	return startNATSWith(t, &natsserver.Options{Port: port})
}

// startNATSWith is startNATS with o's settings (authorization, TLS);
// o.Port 0 picks a free one.
func startNATSWith(t testing.TB, o *natsserver.Options) *natsserver.Server {
	t.Helper()
	o.Host, o.NoLog, o.NoSigs = "127.0.0.1", true, true
	if !o.JetStream { // the cluster needs it; a test may bring its own store
		o.JetStream, o.StoreDir = true, t.TempDir()
	}
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

// gochatNodes returns the node ids of the gochat nodes connected to ns
// (their NATS connections are named "gochat-<node id>").
func gochatNodes(t testing.TB, ns *natsserver.Server) map[string]bool {
	t.Helper()
	cz, err := ns.Connz(&natsserver.ConnzOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, c := range cz.Conns {
		if id, ok := strings.CutPrefix(c.Name, "gochat-"); ok {
			ids[id] = true
		}
	}
	return ids
}

// waitClustered waits until the node is connected to NATS and relays
// through the stream (not delivering on its own).
func waitClustered(t testing.TB, s *node) {
	t.Helper()
	eventually(t, clusterWait, "node connected to the cluster", func() bool {
		return metric(t, s.base, "gochat_cluster_connected") == 1 && metric(t, s.base, "gochat_cluster_degraded") == 0
	})
}

// startNode starts a gochat node relaying through ns and waits until it is
// in the cluster; it returns the node and its node id.
func startNode(t testing.TB, ns *natsserver.Server, cfg server.Config) (*node, string) {
	t.Helper()
	before := gochatNodes(t, ns)
	cfg.NATS = ns.ClientURL()
	s := startServer(t, cfg)
	waitClustered(t, s)
	for id := range gochatNodes(t, ns) {
		if !before[id] {
			return s, id
		}
	}
	t.Fatal("new node not found on nats-server")
	return nil, ""
}

// v2Msg is a gochat.v2 frame.
type v2Msg struct {
	Username string `json:"username"`
	Content  string `json:"content"`
	ID       uint64 `json:"id"`
	Room     string `json:"room"`
	TS       int64  `json:"ts"`
	Gap      bool   `json:"gap"`
}

// v2Client speaks gochat.v2.
type v2Client struct{ wsClient[v2Msg] }

// dialV2 connects to url (with its query) offering gochat.v2, and joins as
// name unless name is empty.
func dialV2(t testing.TB, url, name string) *v2Client {
	t.Helper()
	k := &v2Client{}
	k.name = name
	k.dial(t, url, &websocket.DialOptions{Subprotocols: []string{"gochat.v2"}},
		func(b []byte) v2Msg { return v2Msg{Username: "(bad server JSON)", Content: string(b)} })
	if name != "" {
		k.send(fmt.Sprintf(`{"username":%q}`, name))
	}
	return k
}

// waitFor reads until a message from user with content arrives and returns it.
func (k *v2Client) waitFor(user, content string) v2Msg {
	k.t.Helper()
	for {
		if m := k.next(); m.Username == user && m.Content == content {
			return m
		}
	}
}

// nextIs requires the next message to be from user with content.
func (k *v2Client) nextIs(user, content string) v2Msg {
	k.t.Helper()
	m := k.next()
	if m.Username != user || m.Content != content {
		k.t.Fatalf("%s: got %+v, want %s: %q", k.name, m, user, content)
	}
	return m
}

// quiet requires that nothing arrives for a moment (what a check for an
// absence can do; the markers around it bound what it has to cover).
func (k *v2Client) quiet(d time.Duration) {
	k.t.Helper()
	select {
	case m, ok := <-k.msgs:
		if ok {
			k.t.Fatalf("%s: unexpected %+v", k.name, m)
		}
	case <-time.After(d):
	}
}

func (k *v2Client) close() { k.c.Close(websocket.StatusNormalClosure, "") }

// natsProcess is a real nats-server process with JetStream, so that tests
// can kill -9 it and stop it (SIGSTOP) like the faults they stand for.
type natsProcess struct {
	t    testing.TB
	bin  string
	port int
	dir  string
	cmd  *exec.Cmd
}

var (
	natsBuildOnce sync.Once
	natsBin       string
	natsBuildErr  error
)

// natsServerBinary builds the nats-server of this module's go.mod once.
func natsServerBinary(t testing.TB) string {
	t.Helper()
	natsBuildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "nats-server-e2e-")
		if err != nil {
			natsBuildErr = err
			return
		}
		bin := filepath.Join(dir, "nats-server")
		cmd := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2")
		if out, err := cmd.CombinedOutput(); err != nil {
			natsBuildErr = fmt.Errorf("go build nats-server: %v\n%s", err, out)
			return
		}
		natsBin = bin
	})
	if natsBuildErr != nil {
		t.Fatal(natsBuildErr)
	}
	return natsBin
}

// startNATSProcess runs nats-server -js on a free port with its store in a
// temp dir; killed when the test ends.
func startNATSProcess(t testing.TB) *natsProcess {
	t.Helper()
	addr := freeLoopbackAddr(t)
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	p := &natsProcess{t: t, bin: natsServerBinary(t), port: port, dir: t.TempDir()}
	p.start()
	t.Cleanup(func() {
		if p.cmd != nil {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	})
	return p
}

func (p *natsProcess) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", p.port) }

// start runs the server (again, on the same port and store) and waits
// until it takes connections.
func (p *natsProcess) start() {
	p.t.Helper()
	p.cmd = exec.Command(p.bin, "-a", "127.0.0.1", "-p", strconv.Itoa(p.port), "-js", "-sd", p.dir)
	p.cmd.Stdout, p.cmd.Stderr = io.Discard, io.Discard
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	eventually(p.t, clusterWait, "nats-server listening", func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p.port), time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// kill is kill -9.
func (p *natsProcess) kill() {
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
	p.cmd = nil
}

func (p *natsProcess) signal(sig syscall.Signal) {
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// ---- the tests --------------------------------------------------------------------------

// The basic cluster: a message said on one node reaches the members on
// every node once, presence crosses nodes, and every node gives the
// message the same id.
func TestClusterRelay(t *testing.T) {
	checkLeaks(t)
	ns := startNATS(t, -1)
	a, _ := startNode(t, ns, server.Config{})
	b, _ := startNode(t, ns, server.Config{})

	bob := dialV2(t, b.url, "bob")
	bob.nextIs("System", "bob joined the chat")
	alice := dialV2(t, a.url, "alice")
	alice.nextIs("System", "alice joined the chat")
	bob.nextIs("System", "alice joined the chat")

	alice.send(`{"content":"hello from A"}`)
	ma := alice.nextIs("alice", "hello from A")
	mb := bob.nextIs("alice", "hello from A")
	if ma.ID == 0 || ma.ID != mb.ID || ma.TS != mb.TS || ma.Room != "lobby" {
		t.Fatalf("the same message differs between nodes: A %+v, B %+v", ma, mb)
	}
	if body := readyz(t, a.base); body != "ready\n" {
		t.Errorf("/readyz in the cluster: %q", body)
	}
	bob.send(`{"content":"hi from B"}`)
	mb2 := bob.nextIs("bob", "hi from B")
	ma2 := alice.nextIs("bob", "hi from B")
	if ma2.ID != mb2.ID || ma2.ID <= ma.ID {
		t.Fatalf("ids: %d then A %d B %d", ma.ID, ma2.ID, mb2.ID)
	}

	// Leave notices cross nodes too, exactly once, then nothing else.
	alice.close()
	bob.nextIs("System", "alice left the chat")
	bob.send(`{"content":"alone"}`)
	bob.nextIs("bob", "alone")
	for _, s := range []*node{a, b} {
		for _, m := range []string{"gochat_cluster_gaps_total", "gochat_cluster_unsent_total", "gochat_cluster_publish_rejects_total", "gochat_cluster_local_deliveries_total"} {
			if v := metric(t, s.base, m); v != 0 {
				t.Errorf("%s %s = %v", s.base, m, v)
			}
		}
	}
	if v := metric(t, a.base, "gochat_cluster_published_total"); v < 3 { // join, hello, leave
		t.Errorf("A published %v", v)
	}
}

// Three nodes, a sender on each, 1,000 messages each, sent as fast as the
// nodes take them: every member on every node gets all 3,000 exactly once,
// each sender's in order, and all in the same order with the same ids.
func TestClusterExactlyOnceInOrder(t *testing.T) {
	checkLeaks(t)
	const n = 1000
	ns := startNATS(t, -1)
	off := false
	cfg := server.Config{Rate: 1e6, Burst: 1e6, Presence: &off}
	var nodes []*node
	for range 3 {
		s, _ := startNode(t, ns, cfg)
		nodes = append(nodes, s)
	}
	var senders, receivers []*v2Client
	for i, s := range nodes {
		receivers = append(receivers, dialV2(t, s.url, fmt.Sprintf("r%d", i)))
		senders = append(senders, dialV2(t, s.url, fmt.Sprintf("s%d", i)))
	}
	// Every node has both members before anyone speaks.
	for _, s := range nodes {
		eventually(t, clusterWait, "both members joined on every node", func() bool {
			return metric(t, s.base, "gochat_members") == 2
		})
	}
	for _, k := range append(senders, receivers...) {
		k.send(`{"content":"ready"}`)
	}
	for _, k := range receivers {
		for range 6 {
			if m := k.next(); m.Content != "ready" {
				t.Fatalf("%s: %+v before the ready round", k.name, m)
			}
		}
	}
	var wg sync.WaitGroup
	for i, k := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range n {
				if err := k.c.Write(context.Background(), websocket.MessageText, fmt.Appendf(nil, `{"content":"s%d-%04d"}`, i, j)); err != nil {
					t.Errorf("s%d: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	var orders [][]uint64
	for _, k := range receivers {
		next := map[string]int{}
		var ids []uint64
		for range 3 * n {
			m := k.next()
			want := fmt.Sprintf("%s-%04d", m.Username, next[m.Username])
			if m.Content != want {
				t.Fatalf("%s: got %q from %s, want %q (lost, duplicated or out of order)", k.name, m.Content, m.Username, want)
			}
			next[m.Username]++
			if len(ids) > 0 && m.ID <= ids[len(ids)-1] {
				t.Fatalf("%s: id %d after %d", k.name, m.ID, ids[len(ids)-1])
			}
			ids = append(ids, m.ID)
		}
		orders = append(orders, ids)
		k.quiet(200 * time.Millisecond)
	}
	for i := 1; i < len(orders); i++ {
		if !slices.Equal(orders[0], orders[i]) {
			t.Fatalf("node %d delivered another order or other ids than node 0", i)
		}
	}
}

// expectSeries reads what a receiver got of one sender's numbered
// messages m0000, m0001, ...: exactly once each, in order.
func expectSeries(t testing.TB, k *v2Client, from string, n int) {
	t.Helper()
	for i := range n {
		want := fmt.Sprintf("m%04d", i)
		m := k.next()
		for m.Username == "System" { // presence may interleave
			m = k.next()
		}
		if m.Username != from || m.Content != want {
			t.Fatalf("%s: got %+v, want %s: %q (lost, duplicated or out of order)", k.name, m, from, want)
		}
	}
}

// NATS killed (kill -9) in the middle of traffic and started again on the
// same store: local chat never stops, and the other node gets every
// message exactly once, in order; nothing is counted lost.
func TestClusterNATSKilledAndRestarted(t *testing.T) {
	checkLeaks(t)
	nats := startNATSProcess(t)
	cfg := server.Config{NATS: nats.url(), Rate: 1e4, Burst: 1e4}
	a := startServer(t, cfg)
	b := startServer(t, cfg)
	waitClustered(t, a)
	waitClustered(t, b)
	bob := dialV2(t, b.url, "bob")
	bob.nextIs("System", "bob joined the chat")
	alice := dialV2(t, a.url, "alice")
	alice.nextIs("System", "alice joined the chat")
	bob.nextIs("System", "alice joined the chat")

	const n = 300
	for i := range n {
		if i == 100 {
			nats.kill()
		}
		if i == 200 {
			nats.start()
		}
		alice.send(fmt.Sprintf(`{"content":"m%04d"}`, i))
		alice.nextIs("alice", fmt.Sprintf("m%04d", i)) // local chat goes on
	}
	expectSeries(t, bob, "alice", n)
	waitClustered(t, a)
	bob.send(`{"content":"end"}`)
	alice.nextIs("bob", "end") // none of hers twice: what she saw during the outage is not delivered again
	bob.nextIs("bob", "end")
	for _, s := range []*node{a, b} {
		if v := metric(t, s.base, "gochat_cluster_gaps_total"); v != 0 {
			t.Errorf("%s: gaps %v", s.base, v)
		}
		if v := metric(t, s.base, "gochat_cluster_publish_rejects_total"); v != 0 {
			t.Errorf("%s: rejects %v", s.base, v)
		}
	}
	if v := metric(t, a.base, "gochat_cluster_local_deliveries_total"); v == 0 {
		t.Error("A never delivered on its own while NATS was down")
	}
}

// A hung NATS (SIGSTOP: the socket stays open, nothing answers) is noticed
// within seconds; local chat goes on meanwhile, and once NATS runs again
// the other node gets everything exactly once, in order.
func TestClusterNATSHung(t *testing.T) {
	checkLeaks(t)
	nats := startNATSProcess(t)
	cfg := server.Config{NATS: nats.url()}
	a := startServer(t, cfg)
	b := startServer(t, cfg)
	waitClustered(t, a)
	waitClustered(t, b)
	bob := dialV2(t, b.url, "bob")
	bob.nextIs("System", "bob joined the chat")
	alice := dialV2(t, a.url, "alice")
	alice.nextIs("System", "alice joined the chat")
	bob.nextIs("System", "alice joined the chat")

	alice.send(`{"content":"m0000"}`)
	alice.nextIs("alice", "m0000")
	nats.signal(syscall.SIGSTOP)
	hungAt := time.Now()
	alice.send(`{"content":"m0001"}`)
	alice.nextIs("alice", "m0001") // delivered here once the node gives up waiting
	eventually(t, clusterWait, "node notices the hung NATS", func() bool {
		return metric(t, a.base, "gochat_cluster_degraded") == 1
	})
	if body := readyz(t, a.base); body != "ready (cluster out of reach)\n" {
		t.Errorf("/readyz while NATS hangs: %q", body) // still ready: its members chat on
	}
	noticed := time.Since(hungAt)
	t.Logf("hung NATS noticed after %v", noticed)
	if strictTiming() && noticed > 6*time.Second {
		t.Errorf("hung NATS noticed after %v, want a few seconds", noticed)
	}
	for i := 2; i < 10; i++ {
		alice.send(fmt.Sprintf(`{"content":"m%04d"}`, i))
		alice.nextIs("alice", fmt.Sprintf("m%04d", i))
	}
	nats.signal(syscall.SIGCONT)
	expectSeries(t, bob, "alice", 10)
	waitClustered(t, a)
	bob.send(`{"content":"end"}`)
	alice.nextIs("bob", "end") // none of hers twice
	bob.nextIs("bob", "end")
	if v := metric(t, a.base, "gochat_cluster_gaps_total") + metric(t, b.base, "gochat_cluster_gaps_total"); v != 0 {
		t.Errorf("gaps %v", v)
	}
}

// Records on the bus are checked like client input: forged System texts,
// lookalike and bidi names, over-long content, old formats and junk are
// dropped and counted; members see none of them; a well-formed record goes
// through.
func TestClusterBusInputValidated(t *testing.T) {
	checkLeaks(t)
	ns := startNATS(t, -1)
	s, _ := startNode(t, ns, server.Config{})
	alice := dialV2(t, s.url, "alice")
	alice.nextIs("System", "alice joined the chat")

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	subject := server.DefaultNATSSubject + ".in.lobby"
	pub := func(data []byte) error {
		_, err := js.Publish(ctx, subject, data)
		return err
	}
	record := func(kind byte, count int, name, name2, content string) []byte {
		b := []byte{3, kind, 1} // version, kind, record number
		b = binary.AppendUvarint(b, uint64(count))
		for _, f := range []string{name, name2, content} {
			b = binary.AppendUvarint(b, uint64(len(f)))
			b = append(b, f...)
		}
		return b
	}
	bad := [][]byte{
		record(1, 1, "System", "", "Your session expired, please re-enter your password"),
		record(1, 1, "Ѕуѕtеm", "", "lookalike"),
		record(1, 1, "al\u202eice", "", "bidi"),
		record(1, 1, "mallory", "", strings.Repeat("x", 2001)),
		record(1, 1, "mallory", "", "   "),
		record(2, 1, "mallory", "", "joined; now enter your password"),
		record(9, 1, "mallory", "", ""),
		{2, 0, 5, 'l', 'o', 'b', 'b', 'y'}, // the old relay format
		[]byte("junk"),
	}
	for _, b := range bad {
		if err := pub(b); err != nil {
			t.Fatal(err)
		}
	}
	// 1 MB: the stream itself refuses it.
	if err := pub(record(1, 1, "mallory", "", strings.Repeat("x", 1<<20))); err == nil {
		t.Error("the stream took a 1 MB record")
	}
	// Straight onto a room's live subject, bypassing the stream: no sequence.
	if err := nc.Publish(server.DefaultNATSSubject+".live.lobby", record(1, 1, "mallory", "", "unordered")); err != nil {
		t.Fatal(err)
	}
	if err := pub(record(1, 1, "bob", "", "a fine record")); err != nil {
		t.Fatal(err)
	}
	alice.nextIs("bob", "a fine record")
	eventually(t, clusterWait, "bad records counted", func() bool {
		return metric(t, s.base, `gochat_cluster_dropped_total{reason="invalid"}`) == float64(len(bad)+1)
	})
	alice.send(`{"content":"marker"}`)
	alice.nextIs("alice", "marker")
}

// A flood on the bus (100,000 well-formed records as fast as NATS takes
// them) is bounded: what is over the ingress bound is dropped and counted,
// no member here is evicted, and chat goes on.
func TestClusterFloodFromTheBus(t *testing.T) {
	checkLeaks(t)
	ns := startNATS(t, -1)
	s, _ := startNode(t, ns, server.Config{})
	var members []*v2Client
	for i := range 5 {
		members = append(members, dialV2(t, s.url, fmt.Sprintf("m%02d", i)))
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	b := []byte{3, 1, 1, 1, 7} // version, chat, record number, count, name
	b = append(b, "flooder"...)
	b = append(b, 0, 100)
	b = append(b, strings.Repeat("f", 100)...)
	// Straight to the stream's subject without waiting for acks: as fast as
	// one client can.
	const flood = 100_000
	for range flood {
		if err := nc.Publish(server.DefaultNATSSubject+".in.lobby", b); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	flooded := func() float64 { return metric(t, s.base, `gochat_cluster_dropped_total{reason="flood"}`) }
	overflow := func() float64 { return metric(t, s.base, "gochat_cluster_overflow_total") }
	// What arrives faster than the ingress bound is dropped; what arrives
	// faster than the node reads its subscription overflows it; both are
	// counted (the stream keeps only the room's last 1,000 for a catch-up).
	eventually(t, clusterWait, "the flood cut and counted", func() bool { return flooded()+overflow() > 0 })
	members[0].send(`{"content":"still here"}`)
	for _, k := range members {
		k.waitFor("m00", "still here")
	}
	received := metric(t, s.base, "gochat_cluster_received_total")
	t.Logf("of %d flood records: %v delivered, %v dropped over the ingress bound, %v overflowed the subscription, %v recovered from the stream",
		flood, received, flooded(), overflow(), metric(t, s.base, "gochat_cluster_recovered_total"))
	if received >= flood {
		t.Errorf("all %v flood records delivered: nothing bounded them", received)
	}
	if v := metric(t, s.base, "gochat_slow_consumer_disconnects_total"); v != 0 {
		t.Errorf("%v members evicted by the flood", v)
	}
}

// History and resume come from the cluster: a client that reconnects to
// another node with ?since resumes there exactly after its last message.
func TestClusterResumeOnAnotherNode(t *testing.T) {
	checkLeaks(t)
	ns := startNATS(t, -1)
	a, _ := startNode(t, ns, server.Config{})
	b, _ := startNode(t, ns, server.Config{})
	talker := dialV2(t, a.url+"?room=r1", "talker")
	talker.nextIs("System", "talker joined the chat")
	reader := dialV2(t, a.url+"?room=r1", "reader")
	reader.nextIs("System", "reader joined the chat")
	talker.nextIs("System", "reader joined the chat")
	talker.send(`{"content":"one"}`)
	last := reader.waitFor("talker", "one")
	reader.close()
	talker.waitFor("System", "reader left the chat")
	talker.send(`{"content":"two"}`)
	talker.send(`{"content":"three"}`)
	talker.waitFor("talker", "three")

	// Node B has never had room r1: its first member loads it.
	back := dialV2(t, fmt.Sprintf("%s?room=r1&since=%d", b.url, last.ID), "reader")
	back.nextIs("System", "reader left the chat")
	two := back.nextIs("talker", "two")
	back.nextIs("talker", "three")
	back.nextIs("System", "reader joined the chat")
	if two.ID <= last.ID {
		t.Errorf("resumed id %d after %d", two.ID, last.ID)
	}
	// And ?history on B replays the same messages with the same ids.
	h := dialV2(t, b.url+"?room=r1&history=10", "h")
	if m := h.waitFor("talker", "two"); m.ID != two.ID {
		t.Errorf("history on B: %+v, want id %d", m, two.ID)
	}
}

// A node started while NATS is down serves its members, joins the cluster
// when NATS comes, and what was said meanwhile reaches the cluster.
func TestClusterNodeStartsBeforeNATS(t *testing.T) {
	checkLeaks(t)
	addr := freeLoopbackAddr(t)
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	a := startServer(t, server.Config{NATS: "nats://" + addr})
	alice := dialV2(t, a.url, "alice")
	alice.nextIs("System", "alice joined the chat")
	alice.send(`{"content":"anyone?"}`)
	alice.nextIs("alice", "anyone?")

	ns := startNATS(t, port)
	waitClustered(t, a)
	b, _ := startNode(t, ns, server.Config{})
	bob := dialV2(t, b.url+"?history=10", "bob")
	bob.nextIs("System", "alice joined the chat")
	bob.nextIs("alice", "anyone?")
	bob.nextIs("System", "bob joined the chat")
	alice.nextIs("System", "bob joined the chat")
	alice.send(`{"content":"hi bob"}`)
	bob.nextIs("alice", "hi bob")
}

// NATS unreachable: the outbox holds what members say up to its bound;
// past it the sender is told and the refusal counted; local chat works.
func TestClusterOutboxBound(t *testing.T) {
	checkLeaks(t)
	const size = 8 << 10
	s := startServer(t, server.Config{NATS: "nats://" + freeLoopbackAddr(t), Rate: 1e5, Burst: 1e5, MaxContent: size, MaxMessage: 2 * size, SendQueue: 64 << 20})
	alice := dialV2(t, s.url, "alice")
	alice.nextIs("System", "alice joined the chat")
	content := strings.Repeat("x", size)
	for range 2 * (8 << 20) / size {
		alice.send(fmt.Sprintf(`{"content":%q}`, content))
	}
	eventually(t, clusterWait, "a refusal told", func() bool {
		return metric(t, s.base, "gochat_cluster_publish_rejects_total") > 0
	})
	for {
		m := alice.next()
		if m.Username == "System" && m.Content == "Error: Server busy, message not sent" {
			break
		}
	}
	if v := metric(t, s.base, "gochat_cluster_outbox_messages"); v == 0 {
		t.Error("the outbox is empty while NATS is down")
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

	// Credentials in the NATS URLs never reach the log: a node whose NATS
	// is not reachable logs the URLs it keeps trying.
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

// expectBadJoin requires that joining as name is refused with the taken
// error and closed.
func expectBadJoin(t *testing.T, url, name string) {
	t.Helper()
	k := dialV2(t, url, name)
	k.nextIs("System", "Error: Username is already taken")
	if m, ok := <-k.msgs; ok {
		t.Fatalf("%s: got %+v after the refusal, want the connection closed", name, m)
	}
}

// Usernames are unique per room across the cluster: taken on one node
// (in any spelling with the same key), refused on another until it leaves;
// GET /rooms on any node counts the whole cluster.
func TestClusterNamesUniqueAcrossNodes(t *testing.T) {
	checkLeaks(t)
	ns := startNATS(t, -1)
	a, _ := startNode(t, ns, server.Config{})
	b, _ := startNode(t, ns, server.Config{})
	alice := dialV2(t, a.url, "alice")
	alice.nextIs("System", "alice joined the chat")
	for _, name := range []string{"alice", "ALICE", "ａｌｉｃｅ"} {
		expectBadJoin(t, b.url, name)
	}
	other := dialV2(t, b.url+"?room=elsewhere", "alice") // another room: free
	other.nextIs("System", "alice joined the chat")
	bob := dialV2(t, b.url, "bob")
	bob.nextIs("System", "bob joined the chat")
	alice.nextIs("System", "bob joined the chat")

	var rooms struct {
		Rooms []struct {
			Name    string `json:"name"`
			Members int    `json:"members"`
		} `json:"rooms"`
		Total int `json:"total"`
	}
	eventually(t, clusterWait, "GET /rooms on A counts B's members", func() bool {
		getJSON(t, a.base+"/rooms", &rooms)
		return rooms.Total == 2 && len(rooms.Rooms) == 2 && rooms.Rooms[0].Members == 1 && rooms.Rooms[1].Members == 2
	})
	var members struct {
		Members []string `json:"members"`
		Total   int      `json:"total"`
	}
	getJSON(t, a.base+"/rooms/lobby", &members)
	if !slices.Equal(members.Members, []string{"alice", "bob"}) || members.Total != 2 {
		t.Errorf("GET /rooms/lobby on A: %+v", members)
	}

	alice.close()
	bob.waitFor("System", "alice left the chat")
	eventually(t, clusterWait, "alice free again", func() bool {
		k := dialV2(t, b.url, "alice")
		defer k.close()
		m := k.next()
		return m.Username == "System" && m.Content == "alice joined the chat"
	})
}

// getJSON decodes the JSON answer of a GET.
func getJSON(t testing.TB, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// departureRig is a cluster of three nodes: B and C in-process, with bob
// and carol, and A a real process, with alice and dave, whose joins every
// member has seen.
func departureRig(t *testing.T) (a *gochatProc, b, c *node, bob, carol *v2Client) {
	t.Helper()
	ns := startNATS(t, -1)
	b, _ = startNode(t, ns, server.Config{})
	c, _ = startNode(t, ns, server.Config{})
	a = startGochat(t, gochatOpts{args: []string{"-nats", ns.ClientURL(), "-log-level", "warn"}})
	eventually(t, clusterWait, "the process joined the cluster", func() bool {
		return a.metric("gochat_cluster_connected") == 1 && a.metric("gochat_cluster_degraded") == 0
	})
	bob = dialV2(t, b.url, "bob")
	bob.nextIs("System", "bob joined the chat")
	carol = dialV2(t, c.url, "carol")
	carol.nextIs("System", "carol joined the chat")
	bob.nextIs("System", "carol joined the chat")
	for _, name := range []string{"alice", "dave"} {
		k := dialV2(t, "ws://"+a.addr+"/ws", name)
		k.nextIs("System", name+" joined the chat")
		bob.nextIs("System", name+" joined the chat")
		carol.nextIs("System", name+" joined the chat")
	}
	return a, b, c, bob, carol
}

// expectLeavesOnce requires the next messages of k to be one leave notice
// for each of names, in any order.
func expectLeavesOnce(t *testing.T, k *v2Client, names ...string) {
	t.Helper()
	got := map[string]int{}
	for range names {
		got[k.next().Content]++
	}
	for _, name := range names {
		if got[name+" left the chat"] != 1 {
			t.Fatalf("%s: %v, want each leave once", k.name, got)
		}
	}
}

// A node stopped with SIGTERM: its members leave on every other node at
// once, with one leave notice each, and their names are free.
func TestClusterNodeStopped(t *testing.T) {
	checkLeaks(t)
	a, b, c, bob, carol := departureRig(t)
	stoppedAt := time.Now()
	a.signal(syscall.SIGTERM)
	for _, k := range []*v2Client{bob, carol} {
		expectLeavesOnce(t, k, "alice", "dave")
	}
	took := time.Since(stoppedAt)
	t.Logf("leaves everywhere %v after SIGTERM", took)
	if strictTiming() && took > 3*time.Second {
		t.Errorf("leaves took %v after SIGTERM, want at once", took)
	}
	if code, ok := a.wait(stopWait); !ok || code != 0 {
		t.Errorf("node exited %v (exited %v)", code, ok)
	}
	// Names free at once; nobody else announces them again.
	alice := dialV2(t, b.url, "alice")
	alice.nextIs("System", "alice joined the chat")
	bob.nextIs("System", "alice joined the chat")
	carol.nextIs("System", "alice joined the chat")
	bob.send(`{"content":"marker"}`)
	carol.waitFor("bob", "marker")
	if v := metric(t, b.base, "gochat_cluster_departed_total") + metric(t, c.base, "gochat_cluster_departed_total"); v != 0 {
		t.Errorf("survivors announced %v departures of a node that left cleanly", v)
	}
}

// A node killed (SIGKILL): its members leave on every other node within
// its heartbeat's TTL (10 s, plus a heartbeat to notice), one leave notice
// each though every survivor noticed, and their names are free.
func TestClusterNodeKilled(t *testing.T) {
	checkLeaks(t)
	a, b, c, bob, carol := departureRig(t)
	expectBadJoin(t, b.url, "alice")
	killedAt := time.Now()
	a.kill()
	for _, k := range []*v2Client{bob, carol} {
		expectLeavesOnce(t, k, "alice", "dave")
	}
	took := time.Since(killedAt)
	t.Logf("leaves everywhere %v after SIGKILL", took)
	if strictTiming() && took > 15*time.Second {
		t.Errorf("leaves took %v after SIGKILL, want within the 10 s TTL and a heartbeat", took)
	}
	bob.send(`{"content":"marker"}`)
	bob.nextIs("bob", "marker") // no second leave notice in between
	carol.nextIs("bob", "marker")
	if v := metric(t, b.base, "gochat_cluster_departed_total") + metric(t, c.base, "gochat_cluster_departed_total"); v != 2 {
		t.Errorf("survivors announced %v departures, want 2", v)
	}
	alice := dialV2(t, b.url, "alice")
	alice.nextIs("System", "alice joined the chat")
}

// ackDropper forwards TCP to a nats-server both ways, reading the server's
// side as the NATS protocol: while drop is set it swallows the messages to
// _INBOX subjects (JetStream's acks) and passes everything else (INFO,
// PING/PONG, deliveries), so the node stays connected and only its acks
// are lost.
type ackDropper struct {
	ln      net.Listener
	drop    atomic.Bool
	dropped atomic.Int64
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
}

func startAckDropper(t *testing.T, target string) *ackDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &ackDropper{ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); _, _ = io.Copy(s, c); s.Close() }()
			go func() { defer p.wg.Done(); defer c.Close(); p.serverToClient(s, c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// serverToClient copies the server's protocol lines (and message payloads)
// to the client, leaving out acks while drop is set.
func (p *ackDropper) serverToClient(s, c net.Conn) {
	r := bufio.NewReaderSize(s, 64<<10)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		out := line
		if f := strings.Fields(string(line)); len(f) >= 3 && (f[0] == "MSG" || f[0] == "HMSG") {
			size, _ := strconv.Atoi(f[len(f)-1]) // HMSG's last field is the total size
			payload := make([]byte, size+2)      // and its CRLF
			if _, err := io.ReadFull(r, payload); err != nil {
				return
			}
			if p.drop.Load() && strings.HasPrefix(f[1], "_INBOX.") {
				p.dropped.Add(1)
				continue
			}
			out = append(line, payload...)
		}
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// The stream stored a node's messages but their acks never came back: the
// node sends them again after reconnecting, and JetStream's de-duplication
// by message id keeps one copy each. Every member sees each message once.
func TestClusterAcksLost(t *testing.T) {
	checkLeaks(t)
	ns := startNATS(t, -1)
	proxy := startAckDropper(t, ns.Addr().String())
	a := startServer(t, server.Config{NATS: "nats://" + proxy.ln.Addr().String()})
	waitClustered(t, a)
	b, _ := startNode(t, ns, server.Config{})
	bob := dialV2(t, b.url, "bob")
	bob.nextIs("System", "bob joined the chat")
	alice := dialV2(t, a.url, "alice")
	alice.nextIs("System", "alice joined the chat")
	bob.nextIs("System", "alice joined the chat")

	proxy.drop.Store(true)
	for i := range 5 {
		alice.send(fmt.Sprintf(`{"content":"m%04d"}`, i))
	}
	expectSeries(t, bob, "alice", 5) // stored and delivered to B at once
	for i := range 5 {
		alice.nextIs("alice", fmt.Sprintf("m%04d", i)) // A delivers them itself once it gives up on the acks
	}
	eventually(t, clusterWait, "A sent them again (its ack wait ran out)", func() bool {
		return proxy.dropped.Load() >= 10
	})
	proxy.drop.Store(false)
	eventually(t, clusterWait, "A's outbox empty", func() bool {
		return metric(t, a.base, "gochat_cluster_outbox_messages") == 0
	})
	waitClustered(t, a)
	bob.send(`{"content":"end"}`)
	bob.nextIs("bob", "end") // no second copy of any of alice's
	alice.nextIs("bob", "end")
}

// liveSubs returns the room live subjects each gochat node subscribes to,
// by node id, as nats-server sees them.
func liveSubs(t testing.TB, ns *natsserver.Server) map[string][]string {
	t.Helper()
	cz, err := ns.Connz(&natsserver.ConnzOptions{Subscriptions: true})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, c := range cz.Conns {
		id, ok := strings.CutPrefix(c.Name, "gochat-")
		if !ok {
			continue
		}
		out[id] = []string{}
		for _, s := range c.Subs {
			if room, ok := strings.CutPrefix(s, server.DefaultNATSSubject+".live."); ok {
				out[id] = append(out[id], room)
			}
		}
		slices.Sort(out[id])
	}
	return out
}

// Interest routing: a node subscribes to the rooms it has members in, and
// only to those; a room its last member leaves is dropped at once.
func TestClusterInterestRouting(t *testing.T) {
	checkLeaks(t)
	ns := startNATS(t, -1)
	a, idA := startNode(t, ns, server.Config{})
	b, idB := startNode(t, ns, server.Config{})
	one := dialV2(t, a.url+"?room=r1", "one")
	one.nextIs("System", "one joined the chat")
	two := dialV2(t, b.url+"?room=r2", "two")
	two.nextIs("System", "two joined the chat")
	three := dialV2(t, b.url+"?room=r.3", "three")
	three.nextIs("System", "three joined the chat")
	eventually(t, clusterWait, "each node subscribed to its own rooms only", func() bool {
		s := liveSubs(t, ns)
		return slices.Equal(s[idA], []string{"r1"}) && slices.Equal(s[idB], []string{"r2", "r=3"})
	})
	one.send(`{"content":"only r1"}`)
	one.nextIs("one", "only r1")
	if v := metric(t, b.base, "gochat_cluster_received_total"); v != 2 { // its own two joins
		t.Errorf("B received %v records, want only its own rooms' 2", v)
	}
	two.close()
	eventually(t, clusterWait, "B dropped r2", func() bool {
		return slices.Equal(liveSubs(t, ns)[idB], []string{"r=3"})
	})
}

// A node cut off from NATS longer than its TTL: the others announce its
// members' departure (they are gone for them) while its own members chat
// on locally; when the cut heals, the node claims their names again and
// the others are told they are back.
func TestClusterPartitionHeals(t *testing.T) {
	checkLeaks(t)
	ns := startNATS(t, -1)
	proxy := startProxy(t, ns.Addr().String())
	a := startServer(t, server.Config{NATS: "nats://" + proxy.addr()})
	waitClustered(t, a)
	b, _ := startNode(t, ns, server.Config{})
	bob := dialV2(t, b.url, "bob")
	bob.nextIs("System", "bob joined the chat")
	alice := dialV2(t, a.url, "alice")
	alice.nextIs("System", "alice joined the chat")
	bob.nextIs("System", "alice joined the chat")

	proxy.cut(true)
	bob.nextIs("System", "alice left the chat") // after the TTL
	alice.send(`{"content":"anyone?"}`)
	alice.nextIs("alice", "anyone?") // local chat goes on
	proxy.cut(false)
	// Claimed again (announced as joined), and what she said meanwhile
	// arrives: the outbox may go out before the claim is made.
	got := map[string]bool{}
	for range 2 {
		m := bob.next()
		got[m.Username+": "+m.Content] = true
	}
	if !got["System: alice joined the chat"] || !got["alice: anyone?"] {
		t.Fatalf("bob after the cut healed: %v", got)
	}
	expectBadJoin(t, b.url, "alice")
	if v := metric(t, a.base, "gochat_cluster_name_conflicts_total"); v != 0 {
		t.Errorf("name conflicts %v", v)
	}
}

// readyz returns /readyz's body, requiring 200.
func readyz(t testing.TB, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %s %s", resp.Status, b)
	}
	return string(b)
}

// NATS restarted without its store (no persistence): the nodes make the
// stream and the buckets again, claim their members' names again, and the
// cluster works as before.
func TestClusterNATSLosesItsStore(t *testing.T) {
	checkLeaks(t)
	ns := startNATS(t, -1)
	port := ns.Addr().(*net.TCPAddr).Port
	a, _ := startNode(t, ns, server.Config{})
	b, _ := startNode(t, ns, server.Config{})
	alice := dialV2(t, a.url, "alice")
	alice.nextIs("System", "alice joined the chat")

	ns.Shutdown()
	ns.WaitForShutdown()
	startNATS(t, port) // a fresh store
	waitClustered(t, a)
	waitClustered(t, b)
	eventually(t, clusterWait, "alice's name claimed again", func() bool {
		k := dialV2(t, b.url, "alice")
		defer k.close()
		m := k.next()
		return m.Content == "Error: Username is already taken"
	})
	bob := dialV2(t, b.url, "bob")
	bob.waitFor("System", "bob joined the chat")
	alice.waitFor("System", "bob joined the chat")
	alice.send(`{"content":"still one chat"}`)
	bob.waitFor("alice", "still one chat")
}
