package server

import (
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestJoinBroadcastsContentThenNoticeAsTheOriginal(t *testing.T) {
	s := startServer(t, Config{})
	alice := dial(t, s.url)
	alice.send(`{"username":"alice","content":"Hello everyone!"}`)
	for _, want := range []string{
		`{"username":"alice","content":"Hello everyone!"}`,
		`{"username":"System","content":"alice joined the chat"}`,
	} {
		b, err := alice.readRaw(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != want {
			t.Fatalf("got %s, want %s", b, want)
		}
	}
}

func TestChatReachesEveryoneIncludingSenderAndLeaveIsAnnounced(t *testing.T) {
	s := startServer(t, Config{})
	alice := join(t, s.url, "alice")
	bob := join(t, s.url, "bob")
	alice.waitFor(chatMsg{"System", "bob joined the chat"})
	bob.send(`{"content":"How is everyone?"}`)
	for _, c := range []*client{alice, bob} {
		c.waitFor(chatMsg{"bob", "How is everyone?"})
	}
	bob.conn.Close(websocket.StatusNormalClosure, "")
	alice.waitFor(chatMsg{"System", "bob left the chat"})
}

func TestBadJoinGetsErrorThenPolicyClose(t *testing.T) {
	s := startServer(t, Config{})
	taken := join(t, s.url, "Alice")
	_ = taken
	cases := []struct{ name, join, want string }{
		{"not JSON", `hello`, "Error: Invalid JSON"},
		{"null", `null`, "Error: Message must be a JSON object"},
		{"array", `[]`, "Error: Message must be a JSON object"},
		{"missing username", `{"content":"hi"}`, "Error: Username is required in first message"},
		{"empty username", `{"username":""}`, "Error: Username is required in first message"},
		{"whitespace username", `{"username":"   "}`, "Error: Username is required in first message"},
		{"non-string username", `{"username":42}`, "Error: username and content must be strings"},
		{"reserved System", `{"username":"System"}`, "Error: Username is reserved"},
		{"reserved lower case", `{"username":"system"}`, "Error: Username is reserved"},
		{"reserved full width", `{"username":"ＳＹＳＴＥＭ"}`, "Error: Username is reserved"},
		{"reserved Cyrillic look-alike", `{"username":"Ѕуѕтем"}`, "Error: Username is reserved"},
		{"zero-width inside", `{"username":"System\u200b"}`, "Error: Username contains invalid characters"},
		{"33 characters", `{"username":"` + strings.Repeat("a", 33) + `"}`, "Error: Username must be 1-32 characters"},
		{"newline", `{"username":"a\nb"}`, "Error: Username contains invalid characters"},
		{"NUL", `{"username":"a\u0000b"}`, "Error: Username contains invalid characters"},
		{"bidi override", `{"username":"a\u202eb"}`, "Error: Username contains invalid characters"},
		{"duplicate, other case", `{"username":"ALICE"}`, "Error: Username is already taken"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, s.url)
			c.send(tc.join)
			if m := c.read(); m != (chatMsg{"System", tc.want}) {
				t.Fatalf("got %+v, want System %q", m, tc.want)
			}
			c.expectClose(websocket.StatusPolicyViolation)
		})
	}
}

func TestUsernameIsTrimmedAndFreeAgainAfterLeave(t *testing.T) {
	s := startServer(t, Config{})
	first := dial(t, s.url)
	first.send(`{"username":"  carol  "}`)
	first.waitFor(chatMsg{"System", "carol joined the chat"})
	first.conn.Close(websocket.StatusNormalClosure, "")
	waitUntil(t, "carol to leave", func() bool { return s.hub.Members() == 0 })
	join(t, s.url, "Carol")
}

func TestSilentClientIsClosedAtJoinTimeoutWithoutNotices(t *testing.T) {
	s := startServer(t, Config{JoinTimeout: 200 * time.Millisecond})
	control := join(t, s.url, "control")
	silent := dial(t, s.url)
	silent.expectClose(websocket.StatusPolicyViolation)
	control.send(`{"content":"still here"}`)
	if m := control.read(); m != (chatMsg{"control", "still here"}) {
		t.Fatalf("control got %+v: a notice leaked for the silent client", m)
	}
}

func TestBadMessagesAfterJoinGetErrorsAndKeepTheConnection(t *testing.T) {
	s := startServer(t, Config{})
	c := join(t, s.url, "dave")
	for _, tc := range []struct{ msg, want string }{
		{`{"content":`, "Error: Invalid JSON"},
		{`{"content":123}`, "Error: username and content must be strings"},
		{`{"content":"x","extra":1}`, "Error: Unknown field: only username and content are allowed"},
		{`{"content":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`, "Error: username and content must be strings"},
	} {
		c.send(tc.msg)
		if m := c.read(); m != (chatMsg{"System", tc.want}) {
			t.Fatalf("%s: got %+v, want %q", tc.msg, m, tc.want)
		}
	}
	c.send(`{"content":"still connected"}`)
	c.waitFor(chatMsg{"dave", "still connected"})
}

func TestErrorBudgetExhaustedClosesWithPolicy(t *testing.T) {
	s := startServer(t, Config{ErrorBudget: 3})
	c := join(t, s.url, "erin")
	for range 4 {
		c.send(`nope`)
	}
	c.expectClose(websocket.StatusPolicyViolation)
}

func TestContentOverLimitIsRefusedAndNotBroadcast(t *testing.T) {
	s := startServer(t, Config{MaxContent: 10})
	alice := join(t, s.url, "alice")
	bob := join(t, s.url, "bob")
	alice.waitFor(chatMsg{"System", "bob joined the chat"})
	bob.send(`{"content":"ééééééééééé"}`) // 11 characters, 22 bytes
	if m := bob.read(); m != (chatMsg{"System", "Error: Content is too long"}) {
		t.Fatalf("got %+v", m)
	}
	bob.send(`{"content":"éééééééééé"}`) // exactly 10 characters
	if m := alice.read(); m != (chatMsg{"bob", "éééééééééé"}) {
		t.Fatalf("alice got %+v; the refused message must not be broadcast", m)
	}
}

func TestUsernameAfterJoinIsIgnored(t *testing.T) {
	s := startServer(t, Config{})
	alice := join(t, s.url, "alice")
	alice.send(`{"username":"System","content":"x"}`)
	alice.waitFor(chatMsg{"alice", "x"})
}

func TestEmptyAndWhitespaceContentIsIgnored(t *testing.T) {
	s := startServer(t, Config{})
	alice := join(t, s.url, "alice")
	alice.send(`{"content":""}`)
	alice.send(`{"content":"  \n\t "}`)
	alice.send(`{"content":"real"}`)
	if m := alice.read(); m != (chatMsg{"alice", "real"}) {
		t.Fatalf("got %+v, want the first non-empty message", m)
	}
}

func TestRateLimitRepliesErrorThenClosesSustainedAbuse(t *testing.T) {
	s := startServer(t, Config{Rate: 1, Burst: 2, ErrorBudget: 3})
	control := join(t, s.url, "control")
	c := join(t, s.url, "flood")
	control.waitFor(chatMsg{"System", "flood joined the chat"})
	for i := range 10 {
		c.send(`{"content":"m` + string(rune('0'+i)) + `"}`)
	}
	var chats, limited int
	for {
		b, err := c.readRaw(5 * time.Second)
		if err != nil {
			if websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
				t.Fatalf("closed with %v, want 1008", err)
			}
			break
		}
		switch string(b) {
		case `{"username":"System","content":"Error: Rate limit exceeded, slow down"}`:
			limited++
		case `{"username":"System","content":"Error: Too many errors"}`:
		default:
			chats++
		}
	}
	if limited != 4 {
		t.Fatalf("got %d rate-limit errors, want 4 (budget 3, then close)", limited)
	}
	// The burst got through: the control client sees exactly m0 and m1, then
	// the flooder's leave notice.
	for _, want := range []chatMsg{{"flood", "m0"}, {"flood", "m1"}, {"System", "flood left the chat"}} {
		if m := control.read(); m != want {
			t.Fatalf("control got %+v, want %+v", m, want)
		}
	}
	_ = chats
}

func TestHTMLInContentIsDeliveredAsDataEscapedLikeEncodingJSON(t *testing.T) {
	s := startServer(t, Config{})
	c := join(t, s.url, "mallory")
	c.send(`{"content":"<script>alert(1)</script><img src=x onerror=alert(2)>"}`)
	b, err := c.readRaw(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"username":"mallory","content":"\u003cscript\u003ealert(1)\u003c/script\u003e\u003cimg src=x onerror=alert(2)\u003e"}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
}
