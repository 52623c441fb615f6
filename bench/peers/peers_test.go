// Run without -race for nbio: nbio races on its own connection fields by
// design (its sources carry //go:norace); gorilla and gws pass under -race.

package peers_test

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"gochat/bench/peers/gorillachat"
	"gochat/bench/peers/gwschat"
	"gochat/bench/peers/nbiochat"
)

var peers = []struct {
	name  string
	start func(addr string, presence bool) (func(), error)
}{
	{"gorilla", gorillachat.Start},
	{"gws", gwschat.Start},
	{"nbio", nbiochat.Start},
}

// startPeer starts a peer on a free loopback port and waits for /healthz.
func startPeer(t *testing.T, start func(string, bool) (func(), error), presence bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	stop, err := start(addr, presence)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	for i := 0; ; i++ {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr
			}
		}
		if i == 100 {
			t.Fatalf("/healthz: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func dial(t *testing.T, addr, join string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if join != "" {
		send(t, c, join)
	}
	return c
}

func send(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

// expect reads the next frames of c and compares them byte for byte.
func expect(t *testing.T, who string, c *websocket.Conn, want ...string) {
	t.Helper()
	for _, w := range want {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		typ, p, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("%s: waiting for %s: %v", who, w, err)
		}
		if typ != websocket.TextMessage || string(p) != w {
			t.Fatalf("%s: got %d %s, want %s", who, typ, p, w)
		}
	}
}

// expectClose reads an Error message and then a close with code.
func expectRejected(t *testing.T, who string, c *websocket.Conn, code int) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, p, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("%s: want an Error message, got %v", who, err)
	}
	if want := `{"username":"System","content":"Error: `; len(p) < len(want) || string(p[:len(want)]) != want {
		t.Fatalf("%s: got %s, want an Error: message", who, p)
	}
	_, _, err = c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != code {
		t.Fatalf("%s: after the error got %v, want close %d", who, err, code)
	}
}

func notice(name, what string) string {
	return fmt.Sprintf(`{"username":"System","content":"%s %s the chat"}`, name, what)
}

func TestProtocol(t *testing.T) {
	for _, p := range peers {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			addr := startPeer(t, p.start, true)

			alice := dial(t, addr, `{"username":"alice","content":"Hello!"}`)
			expect(t, "alice", alice, `{"username":"alice","content":"Hello!"}`, notice("alice", "joined"))

			bob := dial(t, addr, `{"username":" bob ","content":""}`)
			expect(t, "bob", bob, notice("bob", "joined"))
			expect(t, "alice", alice, notice("bob", "joined"))

			// Chat reaches every member, the sender included, encoded as
			// encoding/json does; a username after the join is ignored.
			send(t, bob, `{"username":"mallory","content":"Hi <alice> & \u00e9"}`)
			want := `{"username":"bob","content":"Hi \u003calice\u003e \u0026 é"}`
			expect(t, "bob", bob, want)
			expect(t, "alice", alice, want)

			// Blank content is ignored: the next frame is the next message.
			send(t, alice, `{"content":"   "}`)
			send(t, alice, `{"content":"one"}`)
			send(t, alice, `{"content":"two"}`)
			for _, c := range []*websocket.Conn{alice, bob} {
				expect(t, "order", c, `{"username":"alice","content":"one"}`, `{"username":"alice","content":"two"}`)
			}

			// Bad joins: a missing, reserved or taken name → Error, then 1008.
			for _, bad := range []string{`{"content":"x"}`, `{"username":"SYSTEM"}`, `{"username":"ALICE"}`, `not json`} {
				expectRejected(t, bad, dial(t, addr, bad), 1008)
			}

			bob.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""))
			expect(t, "alice", alice, notice("bob", "left"))

			// The name is free again once its owner left.
			bob2 := dial(t, addr, `{"username":"Bob"}`)
			expect(t, "bob2", bob2, notice("Bob", "joined"))
			expect(t, "alice", alice, notice("Bob", "joined"))
		})
	}
}

func TestPresenceOff(t *testing.T) {
	for _, p := range peers {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			addr := startPeer(t, p.start, false)
			a := dial(t, addr, `{"username":"a","content":"first"}`)
			expect(t, "a", a, `{"username":"a","content":"first"}`)
			b := dial(t, addr, `{"username":"b"}`)
			// b's join is registered once a's next message reaches b.
			deadline := time.Now().Add(5 * time.Second)
			for {
				send(t, a, `{"content":"ping"}`)
				b.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				_, p, err := b.ReadMessage()
				if err == nil {
					if string(p) != `{"username":"a","content":"ping"}` {
						t.Fatalf("b got %s, want a's chat and no notice", p)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("b never received a's chat")
				}
				// A read deadline breaks a gorilla conn: dial again.
				b.Close()
				b = dial(t, addr, `{"username":"b`+fmt.Sprint(time.Now().UnixNano())+`"}`)
			}
		})
	}
}
