package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// v2Msg is a gochat.v2 server message (SPEC §8).
type v2Msg struct {
	Username string `json:"username"`
	Content  string `json:"content"`
	ID       uint64 `json:"id"`
	Room     string `json:"room"`
	TS       int64  `json:"ts"`
	Gap      bool   `json:"gap"`
	Since    uint64 `json:"since"`
}

// dialV2 dials offering the gochat.v2 subprotocol.
func dialV2(t testing.TB, url string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{"gochat.v2"}})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	if c.Subprotocol() != "gochat.v2" {
		t.Fatalf("subprotocol %q not negotiated", c.Subprotocol())
	}
	c.SetReadLimit(1 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return &client{t: t, conn: c}
}

func (c *client) readV2() v2Msg {
	c.t.Helper()
	b, err := c.readRaw(5 * time.Second)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var m v2Msg
	if err := json.Unmarshal(b, &m); err != nil {
		c.t.Fatalf("bad server JSON %q: %v", b, err)
	}
	return m
}

// upgradeStatus sends an upgrade for path (with extra headers) and returns
// the HTTP status.
func upgradeStatus(t *testing.T, s *testServer, path string, extra ...string) int {
	t.Helper()
	rc := dialRaw(t, s)
	rc.write([]byte(upgradeRequest(path, extra...)))
	return rc.status()
}

func TestRoomsAreIsolated(t *testing.T) {
	s := startServer(t, Config{})
	a1 := join(t, s.url+"?room=a", "alice")
	b1 := join(t, s.url+"?room=b", "alice") // names are unique per room only
	a2 := join(t, s.url+"?room=a", "bob")
	d := join(t, s.url, "carol") // no ?room: the default room, the seed's chat
	a2.send(`{"content":"only in a"}`)
	b1.send(`{"content":"only in b"}`)
	d.send(`{"content":"only in the default room"}`)
	// Each room's clients read up to a marker of their own room: nothing
	// from another room, no notice of another room's joins, came first.
	for _, tc := range []struct {
		c    *client
		room string
	}{{a1, "a"}, {b1, "b"}, {d, ""}} {
		tc.c.send(`{"content":"marker ` + tc.room + `"}`)
		for {
			m := tc.c.read()
			if m.Content == "marker "+tc.room {
				break
			}
			switch m.Content {
			case "only in a", "bob joined the chat":
				if tc.room != "a" {
					t.Errorf("room %q received %+v from room a", tc.room, m)
				}
			case "only in b":
				if tc.room != "b" {
					t.Errorf("room %q received %+v from room b", tc.room, m)
				}
			case "only in the default room", "carol joined the chat":
				if tc.room != "" {
					t.Errorf("room %q received %+v from the default room", tc.room, m)
				}
			}
		}
	}
}

func TestBadRoomNamesAndQueriesGet400BeforeTheUpgrade(t *testing.T) {
	s := startServer(t, Config{})
	for _, q := range []string{
		"room=", "room=" + strings.Repeat("a", 65), "room=Lobby", "room=..", "room=a%2Fb", "room=a/b", "room=%20",
		"history=-1", "history=x", "history=100001", "history=",
		"since=-5", "since=abc", "since=99999999999999999999", "since=18446744073709551615",
	} {
		if code := upgradeStatus(t, s, "/ws?"+q, "Sec-WebSocket-Protocol: gochat.v2"); code != 400 {
			t.Errorf("?%s: status %d, want 400", q, code)
		}
	}
	// since means nothing without ids: the seed protocol cannot resume.
	if code := upgradeStatus(t, s, "/ws?since=1"); code != 400 {
		t.Errorf("since without gochat.v2: status %d, want 400", code)
	}
	if n := s.hub.RoomCount(); n != 0 {
		t.Fatalf("refused upgrades left %d rooms", n)
	}
	// Unknown parameters are ignored (cache busters and the like).
	if code := upgradeStatus(t, s, "/ws?room=ok&x=1"); code != 101 {
		t.Errorf("unknown parameter: status %d, want 101", code)
	}
}

func TestRoomLimitRefusesNewRoomsAndEmptyRoomsAreFreed(t *testing.T) {
	s := startServer(t, Config{MaxRooms: 5})
	var cs []*client
	for i := range 5 {
		cs = append(cs, join(t, fmt.Sprintf("%s?room=r%d", s.url, i), "u"))
	}
	if code := upgradeStatus(t, s, "/ws?room=one-more"); code != 503 {
		t.Fatalf("room past -max-rooms: status %d, want 503", code)
	}
	// An existing room still takes clients.
	join(t, s.url+"?room=r0", "v").conn.Close(websocket.StatusNormalClosure, "")
	for _, c := range cs {
		c.conn.Close(websocket.StatusNormalClosure, "")
	}
	waitUntil(t, "every room freed", func() bool { return s.hub.RoomCount() == 0 })
	if code := upgradeStatus(t, s, "/ws?room=one-more"); code != 101 {
		t.Fatalf("after the rooms emptied: status %d, want 101", code)
	}
}

func TestRoomsCreatedAndEmptiedInALoopLeaveNothingBehind(t *testing.T) {
	s := startServer(t, Config{})
	settle := func() (int, int, uint64) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), fdCount(t), ms.HeapAlloc
	}
	cycle := func(n int) {
		for i := range n {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			conn, _, err := websocket.Dial(ctx, fmt.Sprintf("%s?room=loop-%d&history=5", s.url, i), nil)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			c := &client{t: t, conn: conn} // no Cleanup: the test must not hold 1,000 clients
			c.send(`{"username":"u","content":"kept in history until the room goes"}`)
			c.waitFor(chatMsg{"u", "kept in history until the room goes"})
			conn.Close(websocket.StatusNormalClosure, "")
		}
		waitUntil(t, "rooms freed", func() bool { return s.hub.RoomCount() == 0 && s.hub.Members() == 0 })
	}
	cycle(100) // warm pools and buffers
	g0, fd0, heap0 := settle()
	cycle(1000)
	waitUntil(t, "connections closed", func() bool { return s.nconns.Load() == 0 })
	// Timers and client goroutines end a moment after the last close.
	waitUntil(t, "goroutines back to where they were", func() bool { return runtime.NumGoroutine() <= g0 })
	g1, fd1, heap1 := settle()
	if s.hub.HistorySize() != 0 {
		t.Errorf("%d history messages kept after every room emptied", s.hub.HistorySize())
	}
	if g1 > g0 || fd1 > fd0 {
		t.Errorf("goroutines %d → %d, fds %d → %d after 1,000 rooms", g0, g1, fd0, fd1)
	}
	// 1,000 rooms with history would hold well over a megabyte if kept.
	if heap1 > heap0+1<<20 {
		t.Errorf("heap %d → %d after 1,000 rooms came and went", heap0, heap1)
	}
}

func TestHistoryIsReplayedAfterTheJoinBeforeTheLiveStream(t *testing.T) {
	s := startServer(t, Config{History: 3})
	a := join(t, s.url+"?room=h", "alice")
	for i := range 5 {
		a.send(fmt.Sprintf(`{"content":"m%d"}`, i))
	}
	a.waitFor(chatMsg{"alice", "m4"})
	// The room keeps the last 3; history=10 is cut to what is kept. Seed
	// clients get them as seed frames, right after their join.
	b := dial(t, s.url+"?room=h&history=10")
	b.send(`{"username":"bob"}`)
	for _, want := range []chatMsg{{"alice", "m2"}, {"alice", "m3"}, {"alice", "m4"}, {"System", "bob joined the chat"}} {
		if m := b.read(); m != want {
			t.Fatalf("got %+v, want %+v", m, want)
		}
	}
	a.send(`{"content":"live"}`)
	b.waitFor(chatMsg{"alice", "live"})
	// No history asked: none replayed (the seed's behaviour).
	c := dial(t, s.url+"?room=h")
	c.send(`{"username":"carol"}`)
	if m := c.read(); m != (chatMsg{"System", "carol joined the chat"}) {
		t.Fatalf("unasked replay: %+v", m)
	}
}

func TestV2FramesCarryIDRoomAndTimeAndSeedFramesDoNot(t *testing.T) {
	s := startServer(t, Config{})
	v := dialV2(t, s.url+"?room=v")
	v.send(`{"username":"vera","content":"hello"}`)
	m1, m2 := v.readV2(), v.readV2()
	if m1.Content != "hello" || m2.Content != "vera joined the chat" || m1.Room != "v" || m1.ID == 0 || m2.ID <= m1.ID {
		t.Fatalf("v2 frames %+v %+v", m1, m2)
	}
	if age := time.Since(time.UnixMilli(m1.TS)); age < 0 || age > time.Minute {
		t.Fatalf("ts %d is not now", m1.TS)
	}
	seed := dial(t, s.url+"?room=v")
	seed.send(`{"username":"sam"}`)
	b, err := seed.readRaw(5 * time.Second)
	if err != nil || string(b) != `{"username":"System","content":"sam joined the chat"}` {
		t.Fatalf("seed frame %s %v", b, err)
	}
}

// resumeAfter collects the frames a client resuming after since gets,
// through its own join notice.
func resumeAfter(t *testing.T, s *testServer, room, name string, since uint64) (got []v2Msg) {
	c := dialV2(t, fmt.Sprintf("%s?room=%s&since=%d", s.url, room, since))
	c.send(fmt.Sprintf(`{"username":%q}`, name))
	for {
		m := c.readV2()
		if m.Username == "System" && m.Content == name+" joined the chat" {
			return got
		}
		got = append(got, m)
	}
}

func TestSinceResumesExactlyAfterTheIDAndAnnouncesAGap(t *testing.T) {
	s := startServer(t, Config{History: 50})
	a := dialV2(t, s.url+"?room=r")
	a.send(`{"username":"alice"}`)
	a.readV2()
	var ids []uint64
	for i := range 10 {
		a.send(fmt.Sprintf(`{"content":"m%d"}`, i))
		ids = append(ids, a.readV2().ID)
	}
	got := resumeAfter(t, s, "r", "bob", ids[6])
	if len(got) != 3 || got[0].Content != "m7" || got[2].Content != "m9" {
		t.Fatalf("resume after m6: %+v", got)
	}
	for _, m := range got {
		if m.Gap {
			t.Fatal("gap announced when history reached back")
		}
	}
	// The last message: nothing to replay, no gap.
	// After the last chat message only bob's join notice is newer.
	if got := resumeAfter(t, s, "r", "carol", ids[9]); len(got) != 1 || got[0].Content != "bob joined the chat" {
		t.Fatalf("resume after the newest: %+v", got)
	}
	// An id from before the room existed: history does not reach back.
	got = resumeAfter(t, s, "r", "dave", 1)
	if len(got) == 0 || !got[0].Gap || got[0].Since != 1 {
		t.Fatalf("resume from before the room: %+v", got)
	}
	if got[1].Content != "alice joined the chat" {
		t.Fatalf("after the gap frame, the whole history: %+v", got[1])
	}
	if n := counterValue(s.metrics.chat.Gaps); n != 1 {
		t.Fatalf("gaps counted %v", n)
	}
}

func TestResumeWhileHistoryIsTrimmedNeverDuplicatesOrReorders(t *testing.T) {
	s := startServer(t, Config{History: 20, Rate: 1e6, Burst: 1 << 20})
	p := dialV2(t, s.url+"?room=t")
	p.send(`{"username":"pub"}`)
	first := p.readV2().ID
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // the publisher reads its echoes, so it never becomes a slow consumer
		for {
			if _, _, err := p.conn.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	go func() { // keeps publishing, so the 20-message ring turns over
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := p.conn.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"content":"n%d"}`, i))
			cancel()
			if err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-done }()
	for k := range 20 {
		name := fmt.Sprintf("r%d", k)
		c := dialV2(t, fmt.Sprintf("%s?room=t&since=%d", s.url, first))
		c.send(fmt.Sprintf(`{"username":%q}`, name))
		last, seen := uint64(0), 0
		for seen < 60 { // the replay, then the live stream
			m := c.readV2()
			if m.Gap {
				continue
			}
			if m.ID <= last {
				t.Fatalf("%s: id %d after %d: duplicate or out of order", name, m.ID, last)
			}
			last = m.ID
			seen++
		}
		c.conn.Close(websocket.StatusNormalClosure, "")
	}
}

func TestRoomsEndpointsListRoomsAndMembers(t *testing.T) {
	s := startServer(t, Config{})
	join(t, s.url+"?room=alpha", "alice")
	join(t, s.url+"?room=alpha", "bob")
	join(t, s.url+"?room=beta", "carol")
	var list struct {
		Rooms []struct {
			Name    string
			Members int
		}
		Total int
	}
	getJSON(t, s.base+"/rooms", 200, &list)
	if list.Total != 2 || len(list.Rooms) != 2 || list.Rooms[0].Name != "alpha" || list.Rooms[0].Members != 2 || list.Rooms[1].Members != 1 {
		t.Fatalf("/rooms: %+v", list)
	}
	var room struct {
		Room    string
		Members []string
		Total   int
	}
	getJSON(t, s.base+"/rooms/alpha", 200, &room)
	if room.Room != "alpha" || room.Total != 2 || strings.Join(room.Members, ",") != "alice,bob" {
		t.Fatalf("/rooms/alpha: %+v", room)
	}
	getJSON(t, s.base+"/rooms/nobody-here", 200, &room)
	if room.Total != 0 || len(room.Members) != 0 {
		t.Fatalf("/rooms/nobody-here: %+v", room)
	}
	getJSON(t, s.base+"/rooms/Bad..Name", 400, nil)
}

func getJSON(t *testing.T, url string, status int, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != status || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("%s: %d %s, want %d JSON", url, resp.StatusCode, resp.Header.Get("Content-Type"), status)
	}
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPresenceMaxSilencesNoticesInLargeRooms(t *testing.T) {
	s := startServer(t, Config{PresenceMax: 2})
	a := join(t, s.url+"?room=p", "a")
	b := join(t, s.url+"?room=p", "b") // 2 members: notices still sent
	a.waitFor(chatMsg{"System", "b joined the chat"})
	c := dial(t, s.url+"?room=p")
	c.send(`{"username":"c","content":"hi"}`) // 3 members: none
	a.waitFor(chatMsg{"c", "hi"})
	b.waitFor(chatMsg{"c", "hi"})
	b.send(`{"content":"marker"}`)
	if m := a.read(); m != (chatMsg{"b", "marker"}) {
		t.Fatalf("got %+v: a join notice was sent above -presence-max", m)
	}
}

// The last members of a large room leave together: their leave summary is
// due in a round that runs after the room is freed. It must find nobody
// to deliver to, not crash the server.
func TestRoomFreedWithASummaryDueDoesNotCrash(t *testing.T) {
	s := startServer(t, Config{PresenceSummary: 1})
	for round := range 20 {
		var cs []*client
		for i := range 4 {
			c := dial(t, fmt.Sprintf("%s?room=z", s.url))
			c.send(fmt.Sprintf(`{"username":"u%d-%d"}`, round, i))
			cs = append(cs, c)
		}
		waitUntil(t, "joined", func() bool { return s.hub.Members() == 4 })
		for _, c := range cs {
			c.conn.CloseNow()
		}
		waitUntil(t, "room freed", func() bool { return s.hub.RoomCount() == 0 })
	}
	time.Sleep(50 * time.Millisecond) // let any round still due run
	join(t, s.url+"?room=z", "after")
	if n := s.hub.HistorySize(); n > 100 {
		t.Fatalf("history gauge %d after every room emptied but one", n)
	}
}
