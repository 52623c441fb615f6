package server

// RELIABILITY.md, application protocol (items 20-32).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// ---- Application protocol ---------------------------------------------------------

// badJoin dials a library client, sends join, and expects an Error message
// with one of the wanted texts, then close 1008.
func (r *rig) badJoin(join string, wants ...string) {
	r.t.Helper()
	c := dial(r.t, r.s.url)
	r.onFinish(func() { c.conn.CloseNow() })
	c.send(join)
	m := c.read()
	ok := false
	for _, w := range wants {
		ok = ok || m == chatMsg{"System", "Error: " + w}
	}
	if !ok || !strings.HasPrefix(m.Content, "Error: ") {
		r.t.Errorf("join %.60q: got %+v, want System Error: %q", join, m, wants)
	}
	c.expectClose(websocket.StatusPolicyViolation)
}

func rel20JoinNotObject(t *testing.T) {
	r := newRig(t, Config{})
	r.badJoin(`hello`, "Invalid JSON")
	r.badJoin(`null`, "Message must be a JSON object")
	r.badJoin(`[]`, "Message must be a JSON object")
	r.badJoin(`"alice"`, "Message must be a JSON object")
	r.badJoin(`42`, "Message must be a JSON object")
	r.badJoin(`{"username":"x"`, "Invalid JSON")
	r.badJoin(`{"username":"x"} {}`, "Invalid JSON")
	expectNoNotices(t, r.finish())
}

func rel21BadUsername(t *testing.T) {
	r := newRig(t, Config{})
	req := "Username is required in first message"
	typ := "username and content must be strings"
	r.badJoin(`{"content":"hi"}`, req)
	r.badJoin(`{}`, req)
	r.badJoin(`{"username":""}`, req)
	r.badJoin(`{"username":"   \t "}`, req)
	r.badJoin(`{"username":null}`, req)
	r.badJoin(`{"username":42}`, typ)
	r.badJoin(`{"username":true}`, typ)
	r.badJoin(`{"username":{"a":"b"}}`, typ)
	r.badJoin(`{"username":["alice"]}`, typ)
	expectNoNotices(t, r.finish())
}

func rel22Reserved(t *testing.T) {
	r := newRig(t, Config{})
	for _, name := range []string{"System", "system", "SYSTEM", " System ", "ＳＹＳＴＥＭ", "Ѕуѕтем", "Sуstem", "ѕystem", "SYSTΕM"} {
		b, _ := json.Marshal(map[string]string{"username": name})
		r.badJoin(string(b), "Username is reserved", "Username contains invalid characters")
	}
	for _, name := range []string{"System\u200b", "Sys\u200dtem", "\ufeffSystem"} {
		b, _ := json.Marshal(map[string]string{"username": name})
		r.badJoin(string(b), "Username is reserved", "Username contains invalid characters")
	}
	expectNoNotices(t, r.finish())
}

func rel23LongUsername(t *testing.T) {
	logs := &lockedBuf{}
	r := newRigOpts(t, Config{}, rigOpts{log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	long := "Username must be 1-32 characters"
	r.badJoin(`{"username":"`+strings.Repeat("q", 33)+`"}`, long)
	r.badJoin(`{"username":"`+strings.Repeat("é", 33)+`"}`, long)
	r.badJoin(`{"username":"`+strings.Repeat("q", 10000)+`"}`, long)
	// 32 characters is the limit, not over it.
	edge := strings.Repeat("ü", 32)
	k := newCtrl(t, r.s.url, edge)
	k.close()
	seen := r.finish()
	expectLeftOnce(t, seen, edge)
	if out := logs.String(); strings.Contains(out, "qqqq") || strings.Contains(out, "éé") || strings.Contains(out, "üü") {
		t.Errorf("a username reached the logs:\n%.500s", out)
	}
}

func rel24ControlChars(t *testing.T) {
	r := newRig(t, Config{})
	for _, name := range []string{"a\nb", "a\u0000b", "a\rb", "a\tb", "a\u007fb", "a\u0085b", "a\u202eb", "a\u2066b",
		"a\u200bb", "a\u200cb", "a\u200db", "a\ufeffb", "a\u2028b", "a\u00adb", "\u3164", "a\ue000b"} {
		b, _ := json.Marshal(map[string]string{"username": name})
		r.badJoin(string(b), "Username contains invalid characters")
	}
	// Escaped in JSON or raw: checked after decoding either way.
	r.badJoin(`{"username":"a\u202Eb"}`, "Username contains invalid characters")
	expectNoNotices(t, r.finish())
}

func rel25Duplicate(t *testing.T) {
	r := newRig(t, Config{})
	alice := newCtrl(t, r.s.url, "alice")
	for _, name := range []string{"alice", "ALICE", "Alice", " alice ", "ａｌｉｃｅ", "CONTROL"} {
		b, _ := json.Marshal(map[string]string{"username": name})
		r.badJoin(string(b), "Username is already taken")
	}
	alice.close()
	r.ctl.until(chatMsg{"System", "alice left the chat"}, 10*time.Second)
	again := newCtrl(t, r.s.url, "ALICE") // free again after the leave
	again.close()
	seen := r.finish()
	expectLeftOnce(t, seen, "ALICE")
	if countMsg(seen, chatMsg{"System", "ALICE joined the chat"}) != 1 {
		t.Errorf("rejoin notice missing: %v", seen)
	}
}

func rel26JoinTimeout(t *testing.T) {
	r := newRig(t, Config{JoinTimeout: 300 * time.Millisecond})
	c := dial(t, r.s.url)
	r.onFinish(func() { c.conn.CloseNow() })
	raw := r.upgradeRaw()
	t0 := time.Now()
	c.expectClose(websocket.StatusPolicyViolation)
	if code := raw.readClose(); code != 1008 {
		t.Errorf("silent raw client: close %d, want 1008", code)
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("join timeout 300ms took %v", d)
	}
	for _, m := range r.finish() {
		if m.Username != "control" {
			t.Errorf("control got %+v for silent clients, want nothing", m)
		}
	}
}

func rel27ErrorBudget(t *testing.T) {
	r := newRig(t, Config{ErrorBudget: 5})
	k := newCtrl(t, r.s.url, "eve")
	for _, tc := range []struct{ msg, want string }{
		{`{"content":`, "Error: Invalid JSON"},
		{`{"content":123}`, "Error: username and content must be strings"},
		{`{"content":"x","admin":true}`, "Error: Unknown field: only username and content are allowed"},
		{`{"content":` + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + `}`, "Error: username and content must be strings"},
		{strings.Repeat("[", 5000) + strings.Repeat("]", 5000), "Error: Message must be a JSON object"},
	} {
		k.send(tc.msg)
		k.until(chatMsg{"System", tc.want}, 10*time.Second)
	}
	k.say("still connected")
	r.ctl.until(chatMsg{"eve", "still connected"}, 10*time.Second)
	k.send(`nope`) // the sixth error in a minute
	k.until(chatMsg{"System", "Error: Too many errors"}, 10*time.Second)
	if err := k.endErr(10 * time.Second); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Errorf("over the error budget: %v, want 1008", err)
	}
	expectLeftOnce(t, r.finish(), "eve")
}

func rel28ContentLimit(t *testing.T) {
	r := newRig(t, Config{MaxContent: 10})
	k := newCtrl(t, r.s.url, "verbose")
	k.say("ééééééééééé") // 11 characters
	k.until(chatMsg{"System", "Error: Content is too long"}, 10*time.Second)
	k.say(strings.Repeat("w", 12000))
	k.until(chatMsg{"System", "Error: Content is too long"}, 10*time.Second)
	k.say("éééééééééé") // 10: fine
	seen := r.ctl.until(chatMsg{"verbose", "éééééééééé"}, 10*time.Second)
	for _, m := range seen {
		if m.Username == "verbose" && !isMarker(m) {
			t.Errorf("over-limit content broadcast: %.40q", m.Content)
		}
	}
	k.close()
	expectLeftOnce(t, r.finish(), "verbose")
}

func rel29Impersonation(t *testing.T) {
	r := newRig(t, Config{})
	k := newCtrl(t, r.s.url, "mallory")
	k.send(`{"username":"System","content":"x"}`)
	k.send(`{"username":"control","content":"y"}`)
	seen := r.ctl.until(chatMsg{"mallory", "y"}, 10*time.Second)
	if countMsg(seen, chatMsg{"mallory", "x"}) != 1 {
		t.Errorf("first message not under the joined name: %v", seen)
	}
	for _, m := range seen {
		if m.Content == "x" && m.Username != "mallory" {
			t.Errorf("impersonation: %+v", m)
		}
	}
	k.close()
	expectLeftOnce(t, r.finish(), "mallory")
}

func rel30HTML(t *testing.T) {
	r := newRig(t, Config{})
	const evil = `<script>alert(1)</script><img src=x onerror=alert(2)>`
	raw := r.rawJoin("html")
	b, _ := json.Marshal(map[string]string{"content": evil})
	raw.write(textFrame(string(b)))
	raw.waitText(`{"username":"html","content":"\u003cscript\u003ealert(1)\u003c/script\u003e\u003cimg src=x onerror=alert(2)\u003e"}`)
	r.ctl.until(chatMsg{"html", evil}, 10*time.Second) // delivered as data, unchanged
	// The page cannot run it: a strict CSP and no HTML sinks in the script.
	resp, err := http.Get(r.s.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
		t.Errorf("CSP %q does not forbid inline script", csp)
	}
	if bytes.Contains(page, []byte("<script>")) || bytes.Contains(page, []byte("onerror=")) {
		t.Error("the page has inline script")
	}
	resp, err = http.Get(r.s.base + "/static/app.js")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, sink := range []string{".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		if bytes.Contains(js, []byte(sink)) {
			t.Errorf("app.js uses %s", sink)
		}
	}
	if !bytes.Contains(js, []byte("textContent")) {
		t.Error("app.js does not render through textContent")
	}
	raw.nc.Close()
	expectLeftOnce(t, r.finish(), "html")
}

func rel31Flood(t *testing.T) {
	r := newRig(t, Config{Rate: 10, Burst: 20, ErrorBudget: 5})
	base := roundTrip(t, r.ctl)
	fl := r.rawJoin("flood")
	var b []byte
	for i := range 1000 {
		b = append(b, textFrame(fmt.Sprintf(`{"content":"f%04d"}`, i))...)
	}
	go func() {
		fl.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		fl.nc.Write(b)
	}()
	during := roundTrip(t, r.ctl)
	if code := fl.readClose(); code != 1008 {
		t.Errorf("flooder: close %d, want 1008", code)
	}
	t.Logf("control round trip %v before, %v during the flood", base, during)
	if during > time.Second {
		t.Errorf("control round trip %v during the flood", during)
	}
	seen := r.finish()
	n := 0
	for _, m := range seen {
		if m.Username == "flood" {
			if want := fmt.Sprintf("f%04d", n); m.Content != want {
				t.Errorf("flood message %q, want %q", m.Content, want)
			}
			n++
		}
	}
	if n > 21 {
		t.Errorf("%d flood messages got through a burst of 20", n)
	}
	expectLeftOnce(t, seen, "flood")
	if got := counterValue(r.s.metrics.chat.RateLimited); got < 6 {
		t.Errorf("rate limited %v", got)
	}
}

func roundTrip(t *testing.T, k *ctrl) time.Duration {
	t.Helper()
	t0 := time.Now()
	k.marker()
	return time.Since(t0)
}

func rel32Ordering(t *testing.T) {
	r := newRig(t, Config{Rate: 1000, Burst: 1000})
	const senders, per = 3, 100
	ks := []*ctrl{r.ctl}
	for i := range senders {
		ks = append(ks, newCtrl(t, r.s.url, fmt.Sprintf("s%d", i)))
	}
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for i := 1; i <= senders; i++ {
		wg.Add(1)
		go func(k *ctrl) {
			defer wg.Done()
			for j := range per {
				if err := k.trySend(fmt.Sprintf(`{"content":"%s-%03d"}`, k.name, j)); err != nil {
					errs <- err
					return
				}
			}
		}(ks[i])
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Every receiver sees each sender's messages complete and in order, and
	// the join notice of everyone who joined after it exactly once.
	for idx, k := range ks {
		var lasts []chatMsg
		for i := 1; i <= senders; i++ {
			lasts = append(lasts, chatMsg{ks[i].name, fmt.Sprintf("%s-%03d", ks[i].name, per-1)})
		}
		all := k.untilAll(lasts, 20*time.Second)
		all = append(all, k.marker()...)
		next := map[string]int{}
		for _, m := range all {
			if m.Username == "System" || isMarker(m) {
				continue
			}
			if want := fmt.Sprintf("%s-%03d", m.Username, next[m.Username]); m.Content != want {
				t.Errorf("%s got %q from %s, want %q", k.name, m.Content, m.Username, want)
			}
			next[m.Username]++
		}
		for i := 1; i <= senders; i++ {
			if next[ks[i].name] != per {
				t.Errorf("%s got %d of %s's %d messages", k.name, next[ks[i].name], ks[i].name, per)
			}
			want := 0
			if i > idx {
				want = 1
			}
			if got := countMsg(all, chatMsg{"System", ks[i].name + " joined the chat"}); got != want {
				t.Errorf("%s saw %s's join notice %d times, want %d", k.name, ks[i].name, got, want)
			}
		}
	}
	// A sender whose frames arrive in small pieces (slow link): every read
	// adds to an incomplete frame without completing it. Each message must
	// arrive intact and in order.
	dr := r.rawJoin("dribbler")
	var stream []byte
	for i := range 3 {
		stream = append(stream, textFrame(fmt.Sprintf(`{"content":"d%d %s"}`, i, strings.Repeat("abcdefghij", 150)))...)
	}
	for len(stream) > 0 {
		piece := stream[:min(61, len(stream))]
		stream = stream[len(piece):]
		dr.write(piece)
		time.Sleep(200 * time.Microsecond) // pacing the link, not waiting for a condition
	}
	for i := range 3 {
		r.ctl.until(chatMsg{"dribbler", fmt.Sprintf("d%d %s", i, strings.Repeat("abcdefghij", 150))}, 10*time.Second)
	}
	dr.nc.Close()
	for _, k := range ks[1:] {
		k.close()
	}
	expectLeftOnce(t, r.finish(), "s0", "s1", "s2", "dribbler")
}
