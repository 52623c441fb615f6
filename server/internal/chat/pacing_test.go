package chat

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// slowMember takes 3 ms per delivery, so its room's rounds count as
// expensive (paceAbove), as a room of a few thousand members does.
type slowMember struct {
	recorder
	deliveries atomic.Int32
}

func (m *slowMember) Deliver(b []byte) (bool, int) {
	time.Sleep(3 * time.Millisecond)
	m.deliveries.Add(1)
	return m.recorder.Deliver(b)
}

func joinSlow(t *testing.T, h *Hub) (*Session, *slowMember) {
	t.Helper()
	m := &slowMember{}
	s := enter(t, h, "big", m, 1, `{"username":"alice","content":"hello"}`)
	waitFor(t, "the join", func() bool { return m.has(`"hello"`) && h.Idle() })
	return s, m
}

// An expensive room whose messages come one at a time is not held back by
// RoundInterval: pacing would add its latency and save no write.
func TestQuietExpensiveRoomIsNotHeldBack(t *testing.T) {
	h := testHub(t, func(c *Config) { c.RoundInterval = time.Hour })
	s, m := joinSlow(t, h)
	for _, text := range []string{"one", "two", "three"} {
		s.OnMessage([]byte(`{"content":"`+text+`"}`), time.Now().UnixNano())
		waitFor(t, "message "+text+" without waiting for the round interval", func() bool { return m.has(`"` + text + `"`) })
	}
	s.Leave()
}

// An expensive room whose messages come fast keeps RoundInterval between
// rounds, so that its members get many messages per write.
func TestBusyExpensiveRoomSharesWrites(t *testing.T) {
	h := testHub(t, func(c *Config) { c.RoundInterval = 100 * time.Millisecond; c.Rate, c.Burst = 1e6, 1e6 })
	s, m := joinSlow(t, h)
	before := m.deliveries.Load()
	const n = 200
	for i := range n {
		s.OnMessage(fmt.Appendf(nil, `{"content":"m%d"}`, i), time.Now().UnixNano())
		time.Sleep(5 * time.Millisecond)
	}
	waitFor(t, "every message", func() bool { return m.has(fmt.Sprintf(`"m%d"`, n-1)) })
	if writes := m.deliveries.Load() - before; writes > n/2 {
		t.Fatalf("%d messages took %d writes: the busy room was not paced", n, writes)
	}
	s.Leave()
}

// writeLog is a slow member that keeps each delivery apart.
type writeLog struct {
	slowMember
	mu     sync.Mutex
	writes []string
}

func (w *writeLog) Deliver(b []byte) (bool, int) {
	w.mu.Lock()
	w.writes = append(w.writes, string(b))
	w.mu.Unlock()
	return w.slowMember.Deliver(b)
}

func (w *writeLog) firstWrite() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.writes) == 0 {
		return ""
	}
	return w.writes[0]
}

// A message that arrives while a round is under way reaches the members
// the round has not visited yet in that round, in the same write as the
// message the round started with.
func TestMessageJoinsTheRoundUnderWay(t *testing.T) {
	h := testHub(t, func(c *Config) { c.Rate, c.Burst = 1e6, 1e6 })
	members := make([]*writeLog, 8)
	sessions := make([]*Session, len(members))
	for i := range members {
		members[i] = &writeLog{}
		sessions[i] = enter(t, h, "wave", members[i], int32(i+1), fmt.Sprintf(`{"username":"u%d"}`, i))
	}
	waitFor(t, "the joins", func() bool { return h.Idle() })
	for _, m := range members {
		m.mu.Lock()
		m.writes = nil
		m.mu.Unlock()
	}
	// A round over 8 members at 3 ms each takes about 24 ms; m2 arrives
	// 6 ms into it.
	sessions[0].OnMessage([]byte(`{"content":"m1"}`), time.Now().UnixNano())
	time.Sleep(6 * time.Millisecond)
	sessions[0].OnMessage([]byte(`{"content":"m2"}`), time.Now().UnixNano())
	last := members[len(members)-1]
	waitFor(t, "both messages at the last member", func() bool { return last.has(`"m1"`) && last.has(`"m2"`) })
	if w := last.firstWrite(); !strings.Contains(w, `"m1"`) || !strings.Contains(w, `"m2"`) {
		t.Fatalf("the last member's first write was %q: m2 waited for the next round", w)
	}
	for _, s := range sessions {
		s.Leave()
	}
}

// gatedMember counts its deliveries; once armed, its next delivery waits
// until the test opens the gate.
type gatedMember struct {
	recorder
	count   *atomic.Int32
	armed   atomic.Bool
	reached chan struct{}
	gate    chan struct{}
}

func (m *gatedMember) Deliver(b []byte) (bool, int) {
	if m.armed.CompareAndSwap(true, false) {
		close(m.reached)
		<-m.gate
	}
	m.count.Add(1)
	return true, len(b)
}

// A round over many members yields its worker after each fanoutChunk of
// them, so work that waits for a worker (a sender's message being read)
// is not held until the round ends. One worker, one fan-out task: a task
// scheduled while the round visits its first member runs before the round
// has visited them all.
func TestRoundYieldsToWaitingWork(t *testing.T) {
	h := testHubOn(t, 1, func(c *Config) { c.Shards = 1; c.Rate, c.Burst = 1e6, 1e6 })
	var delivered atomic.Int32
	const n = 2 * fanoutChunk
	members := make([]*gatedMember, n)
	sessions := make([]*Session, n)
	for i := range members {
		members[i] = &gatedMember{count: &delivered, reached: make(chan struct{}), gate: make(chan struct{})}
		sessions[i] = enter(t, h, "crowd", members[i], int32(i+1), fmt.Sprintf(`{"username":"u%d"}`, i))
	}
	waitFor(t, "the joins", func() bool { return h.Idle() })
	delivered.Store(0)
	first := members[0]
	first.armed.Store(true)
	sessions[1].OnMessage([]byte(`{"content":"hello"}`), time.Now().UnixNano())
	<-first.reached // the round holds the only worker, at its first member
	ranAt := make(chan int32, 1)
	if err := h.pool.Schedule(funcTask(func() { ranAt <- delivered.Load() })); err != nil {
		t.Fatal(err)
	}
	close(first.gate)
	if got := <-ranAt; got >= n {
		t.Fatalf("the waiting task ran after %d deliveries: the round held the worker to its end (%d members)", got, n)
	}
	waitFor(t, "the round", func() bool { return delivered.Load() == n })
	for _, s := range sessions {
		s.Leave()
	}
}

type funcTask func()

func (f funcTask) Run() { f() }
