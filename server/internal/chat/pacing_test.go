package chat

import (
	"fmt"
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
	s := new(Session)
	s.Init(m, 1)
	r, err := h.Acquire([]byte("big"))
	if err != nil {
		t.Fatal(err)
	}
	s.Attach(r, Options{})
	s.OnMessage([]byte(`{"username":"alice","content":"hello"}`), time.Now().UnixNano())
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
