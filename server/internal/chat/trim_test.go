package chat

import (
	"bytes"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"gochat/pool"
	"gochat/server/internal/wsframe"
)

// recorder is a Transport that keeps what it is given.
type recorder struct {
	mu  sync.Mutex
	got []byte
}

func (r *recorder) Deliver(b []byte) (bool, int) {
	r.mu.Lock()
	r.got = append(r.got, b...)
	r.mu.Unlock()
	return true, len(b)
}
func (r *recorder) Send(b []byte)             { r.Deliver(b) }
func (r *recorder) Close(*wsframe.CloseCause) {}
func (r *recorder) Joined()                   {}

func (r *recorder) has(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Contains(r.got, []byte(s))
}

func testHub(t *testing.T, opts ...func(*Config)) *Hub {
	t.Helper()
	return testHubOn(t, 4, opts...)
}

// testHubOn is testHub on a pool of the given number of workers.
func testHubOn(t *testing.T, workers int, opts ...func(*Config)) *Hub {
	t.Helper()
	p, err := pool.New(workers, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "c"})
	m := &Metrics{Joins: c, JoinRejects: c, Leaves: c, MessagesIn: c, Published: c, Deliveries: c, BytesOut: c,
		Rounds: c, BusyRejects: c, RateLimited: c, ErrorBudget: c, Replayed: c, Gaps: c,
		BroadcastLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "h"})}
	cfg := Config{MaxContent: 2000, Rate: 10, Burst: 20, MaxRooms: 10, History: 100, PresenceSummary: 2000, Shards: 4}
	for _, o := range opts {
		o(&cfg)
	}
	return NewHub(cfg, p, m, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// enter puts a session with transport tr and id in room (acquired for
// it, as a connection does) and sends its first message, the join.
func enter(t *testing.T, h *Hub, room string, tr Transport, id int32, join string) *Session {
	t.Helper()
	r, err := h.Acquire([]byte(room))
	if err != nil {
		t.Fatal(err)
	}
	s := new(Session)
	s.Init(tr, id)
	s.Attach(r, Options{})
	s.OnMessage([]byte(join), time.Now().UnixNano())
	return s
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// A room that spoke once and went quiet gives its broadcast buffers back
// on Trim, and speaks again as before.
func TestTrimDropsIdleRoomBuffers(t *testing.T) {
	h := testHub(t)
	rec := &recorder{}
	s := enter(t, h, "small", rec, 1, `{"username":"alice","content":"one"}`)
	r := s.room
	waitFor(t, "the first message delivered", func() bool { return rec.has(`"one"`) && h.Idle() })
	if r.rounds.bufs == nil {
		t.Fatal("no buffers after a round (the test proves nothing)")
	}
	h.Trim()
	if r.rounds.bufs != nil {
		t.Fatal("Trim kept an idle room's broadcast buffers")
	}
	s.OnMessage([]byte(`{"content":"two"}`), time.Now().UnixNano())
	waitFor(t, "a message after Trim delivered", func() bool { return rec.has(`"two"`) })
	s.Leave()
}
