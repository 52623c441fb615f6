package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"gochat/server"
)

// startGochat runs a real gochat server in-process on a free loopback port
// and returns its WebSocket URL and its base http:// URL.
func startGochat(t *testing.T, cfg server.Config) (wsURL, base string) {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	s, err := server.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	addr := s.Addr().String()
	return "ws://" + addr + "/ws", "http://" + addr
}

// roomsConfigFor is a small rooms run: conns clients in rooms rooms, one
// sender per room at 5 msg/s for a second.
func roomsConfigFor(wsURL string, conns, rooms int) *Config {
	cfg := &Config{
		URL:         wsURL,
		Conns:       conns,
		DialWorkers: 16,
		Timeout:     10 * time.Second,
		LocalAddrs:  1,
		Rate:        float64(5 * rooms),
		Duration:    time.Second,
		Size:        80,
		Drain:       5 * time.Second,
	}
	cfg.Rooms = roomsConfig{Small: rooms, BigSenders: 1, BigRate: 10}
	return cfg
}

// TestRoomsIsolated runs 200 clients in 20 rooms, plus a big room of 50,
// against a real gochat (notices on): every client gets exactly its room's
// messages, nothing leaks, nothing is lost or duplicated.
func TestRoomsIsolated(t *testing.T) {
	t.Parallel()
	wsURL, _ := startGochat(t, server.Config{Rate: 1000, Burst: 1000})
	cfg := roomsConfigFor(wsURL, 250, 20)
	cfg.Rooms.Big, cfg.Rooms.BigSenders, cfg.Rooms.BigRate = 50, 2, 20
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := runScenario(ctx, scenarios["rooms"], cfg)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	rs := res.Rooms
	if res.Connected != 250 || res.Unconfirmed != 0 || res.Receivers != 250 {
		t.Fatalf("connected %d unconfirmed %d receivers %d", res.Connected, res.Unconfirmed, res.Receivers)
	}
	if rs.Rooms != 20 || rs.MembersMin != 10 || rs.MembersMax != 10 || rs.Big != 50 || len(rs.Classes) != 2 {
		t.Fatalf("layout %+v", rs)
	}
	small, big := rs.Classes[0], rs.Classes[1]
	// 20 senders × 5 msg/s × 1 s to 10 members each; 2 × 10 msg/s to 50.
	if small.Sent != 100 || small.Expected != 1000 || big.Sent != 20 || big.Expected != 1000 {
		t.Fatalf("small %+v big %+v", small, big)
	}
	if res.Lost != 0 || *rs.Leaked != 0 || *rs.LeakedOther != 0 || *rs.Duplicates != 0 || *rs.Unexpected != 0 {
		t.Fatalf("lost %d leaked %d/%d dups %d unexpected %d", res.Lost, *rs.Leaked, *rs.LeakedOther, *rs.Duplicates, *rs.Unexpected)
	}
	if res.Deliveries != 2000 || res.Latency == nil || res.Latency.Count != 2000 {
		t.Fatalf("deliveries %d latency %+v", res.Deliveries, res.Latency)
	}
}

// TestRoomsLeakDetected makes the plan wrong on purpose: the clients the
// bench counts as room 1 really join room 0, so each side receives the
// other's messages. The run must count exactly those as leaked and fail.
func TestRoomsLeakDetected(t *testing.T) {
	t.Parallel()
	wsURL, _ := startGochat(t, server.Config{Rate: 1000, Burst: 1000})
	cfg := roomsConfigFor(wsURL, 200, 20)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := runRoomsWith(ctx, cfg, func(r *roomsRun) { r.urls[1] = r.urls[0] })
	if err == nil || !strings.Contains(err.Error(), "leaked from another room") {
		t.Fatalf("err = %v; want the leak", err)
	}
	rs := res.Rooms
	// Rooms 0 and 1 have 10 members each; each side gets the other's 5.
	if *rs.Leaked != 2*10*5 {
		t.Errorf("leaked %d messages, want %d", *rs.Leaked, 2*10*5)
	}
	// The other 18 rooms are fine, and nobody missed its own messages.
	if res.Lost != 0 || *rs.Duplicates != 0 {
		t.Errorf("lost %d duplicates %d", res.Lost, *rs.Duplicates)
	}
	if *rs.LeakedOther == 0 {
		t.Errorf("no leaked join notice or barrier counted")
	}
}

// TestIdleRooms spreads idle clients over rooms: while they are held, the
// server must show exactly that layout.
func TestIdleRooms(t *testing.T) {
	t.Parallel()
	wsURL, base := startGochat(t, server.Config{})
	cfg := roomsConfigFor(wsURL, 100, 7)
	cfg.Hold = 2 * time.Second
	seen := make(chan map[string]int, 1)
	go func() { // the layout once all 100 joined, read during the hold
		defer close(seen)
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			m, total := roomMembers(base), 0
			for _, n := range m {
				total += n
			}
			if total == 100 {
				seen <- m
				return
			}
		}
	}()
	res := run(t, runIdle, cfg)
	if res.Receivers != 100 || res.Rooms == nil || res.Rooms.Rooms != 7 || res.Rooms.MembersMin != 14 || res.Rooms.MembersMax != 15 {
		t.Fatalf("receivers %d rooms %+v", res.Receivers, res.Rooms)
	}
	members := <-seen
	if len(members) != 7 {
		t.Fatalf("server rooms %v, want 7", members)
	}
	for name, n := range members {
		if n < 14 || n > 15 {
			t.Errorf("room %s has %d members, want 14 or 15", name, n)
		}
	}
}

// roomMembers reads GET /rooms: member count by room name.
func roomMembers(base string) map[string]int {
	resp, err := http.Get(base + "/rooms")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var body struct {
		Rooms []struct {
			Name    string `json:"name"`
			Members int    `json:"members"`
		} `json:"rooms"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil
	}
	out := map[string]int{}
	for _, r := range body.Rooms {
		out[r.Name] = r.Members
	}
	return out
}

// TestRoomsFailsWhenClientsAreRefused: like every mode, a rooms run short
// of clients says so.
func TestRoomsFailsWhenClientsAreRefused(t *testing.T) {
	t.Parallel()
	ts := startTestServer(t, &testServer{victim: -1, maxConns: 5})
	cfg := testConfig(ts, 10)
	cfg.Rooms = roomsConfig{Small: 2, BigSenders: 1}
	cfg.Drain = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := runScenario(ctx, scenarios["rooms"], cfg)
	if err == nil || !strings.Contains(err.Error(), "5 of 10 clients could not connect") {
		t.Fatalf("err = %v; want the count", err)
	}
}
