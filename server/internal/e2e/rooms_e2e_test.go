package e2e

// Browser end-to-end tests of rooms and resume (SPEC §8, issue #12): the
// real binary, the embedded page and headless Chromium, as in e2e_test.go.
//
// The resume tests count what the page shows, node by node: the page does
// not de-duplicate by message id, so "every message exactly once, in order"
// holds only if the server replays exactly what the page missed — which it
// does only if the page reconnects with ?since=LASTID.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

func TestE2ERoomsInThePage(t *testing.T) {
	needChromium(t)
	srv := startGochat(t, gochatOpts{})
	base := "http://" + srv.addr
	browser := newBrowser(t)

	// alice comes in through a link to room "a": the fragment picks the room.
	alice := openTabAt(t, browser, "alice", base+"/#a", false)
	alice.check(t, "the fragment fills in the room field", `document.getElementById('room').value === 'a'`)
	alice.do(t, chromedp.SendKeys(chromedp.ID("username"), "alice"+kb.Enter))
	alice.waitJoined(t, "alice")
	alice.check(t, "the header shows the room", `document.getElementById('room-label').textContent === '#a' &&
		!document.getElementById('room-label').hidden`)

	// bob opens the bare page: the room field says lobby, and the rooms in
	// use are offered to pick from.
	bob := openTab(t, browser, "bob", base, false)
	bob.check(t, "the room field defaults to lobby", `document.getElementById('room').value === 'lobby'`)
	bob.waitFor(t, "room a is offered in the room list", `!!document.querySelector('#room-list option[value="a"]')`)

	t.Run("a bad room name is refused in the page with the rule", func(t *testing.T) {
		bob.do(t,
			chromedp.SendKeys(chromedp.ID("username"), "bob"),
			chromedp.Evaluate[chromedp.Void](`document.getElementById('room').value = ''`),
			chromedp.SendKeys(chromedp.ID("room"), "Bad Room!"),
			chromedp.Click(chromedp.ID("join")))
		bob.waitFor(t, "the join form explains the room name rule",
			`(() => { const e = document.getElementById('join-error');
			   return !e.hidden && e.textContent.includes('lower-case') &&
			          !document.getElementById('join-view').hidden; })()`)
		bob.check(t, "no connection was tried", `document.getElementById('status').textContent === 'disconnected'`)
	})

	bob.do(t,
		chromedp.Evaluate[chromedp.Void](`document.getElementById('room').value = ''`),
		chromedp.SendKeys(chromedp.ID("room"), "a"+kb.Enter))
	bob.waitJoined(t, "bob")
	bob.check(t, "the fragment follows the room joined", `location.hash === '#a'`)

	carol := openTabAt(t, browser, "carol", base+"/#b", true) // phone-sized
	carol.do(t, chromedp.SendKeys(chromedp.ID("username"), "carol"+kb.Enter))
	carol.waitJoined(t, "carol")
	carol.check(t, "carol's header shows room b", `document.getElementById('room-label').textContent === '#b'`)

	ok := t.Run("messages stay in their room", func(t *testing.T) {
		alice.do(t, chromedp.SendKeys(chromedp.ID("message"), "hello from a"+kb.Enter))
		bob.waitFor(t, "bob (room a) sees alice's message", hasMessageJS("alice", "hello from a", "chat"))
		carol.do(t, chromedp.SendKeys(chromedp.ID("message"), "hello from b"+kb.Enter))
		carol.waitFor(t, "carol sees her own message", hasMessageJS("carol", "hello from b", "own"))
		bob.do(t, chromedp.SendKeys(chromedp.ID("message"), "bob in a"+kb.Enter))
		alice.waitFor(t, "alice sees bob's message", hasMessageJS("bob", "bob in a", "chat"))
		// carol's own later message came back to her after room a's traffic
		// had been fanned out; check once more after one more round in b.
		carol.do(t, chromedp.SendKeys(chromedp.ID("message"), "carol again"+kb.Enter))
		carol.waitFor(t, "carol sees her second message", hasMessageJS("carol", "carol again", "own"))
		bob.waitFor(t, "bob sees his own message", hasMessageJS("bob", "bob in a", "own"))

		for _, c := range []struct {
			tab  *e2eTab
			none []string
		}{
			{alice, []string{"hello from b", "carol again", "carol joined the chat"}},
			{bob, []string{"hello from b", "carol again", "carol joined the chat"}},
			{carol, []string{"hello from a", "bob in a", "alice joined the chat", "bob joined the chat"}},
		} {
			for _, m := range c.tab.messages(t) {
				if slices.Contains(c.none, m.Content) {
					t.Errorf("%s sees %q from another room", c.tab.name, m.Content)
				}
			}
		}
	})
	if !ok {
		return
	}

	ok = t.Run("who is here lists the room's members", func(t *testing.T) {
		alice.waitMembers(t, "alice", "bob")
		bob.waitMembers(t, "alice", "bob")
		carol.waitMembers(t, "carol")
		alice.check(t, "the count is shown", `document.getElementById('member-count').textContent === '(2)'`)
		bob.do(t, chromedp.Click(chromedp.ID("leave")))
		alice.waitFor(t, "alice sees bob leave", hasMessageJS("System", "bob left the chat", "system"))
		alice.waitMembers(t, "alice")
		alice.screenshot(t, "rooms-1-members")
		carol.screenshot(t, "rooms-1-members")
	})
	if !ok {
		return
	}

	t.Run("a new fragment moves the page to that room", func(t *testing.T) {
		carol.do(t, chromedp.Evaluate[chromedp.Void](`location.hash = 'a'`))
		carol.waitFor(t, "carol is in room a", `document.getElementById('room-label').textContent === '#a' &&
			document.getElementById('status').textContent === 'connected'`)
		alice.waitFor(t, "alice sees carol join room a", hasMessageJS("System", "carol joined the chat", "system"))
		alice.waitMembers(t, "alice", "carol")
		carol.waitMembers(t, "alice", "carol")
		carol.check(t, "room b's messages are gone from carol's list",
			`!document.getElementById('messages').textContent.includes('hello from b')`)
		carol.waitFor(t, "carol got room a's recent history", hasMessageJS("alice", "hello from a", "chat"))
	})

	t.Run("the pages ran without script errors or CSP violations", func(t *testing.T) {
		for _, tb := range []*e2eTab{alice, bob, carol} {
			tb.noConsoleErrors(t)
		}
	})
}

func TestE2EResumeThroughACutConnection(t *testing.T) {
	needChromium(t)
	// The sender sends faster than the default 10/s, so that many messages
	// go by while the page is cut off.
	srv := startGochat(t, gochatOpts{args: []string{"-rate", "100", "-burst", "100"}})
	proxy := startProxy(t, srv.addr)
	browser := newBrowser(t)

	page := openTabAt(t, browser, "page", "http://"+proxy.addr()+"/#r", false)
	page.do(t, chromedp.SendKeys(chromedp.ID("username"), "pat"+kb.Enter))
	page.waitJoined(t, "pat")

	sender := joinChat(t, "ws://"+srv.addr+"/ws?room=r", "sam") // directly, not through the proxy
	page.waitFor(t, "the page sees sam join", hasMessageJS("System", "sam joined the chat", "system"))

	const total, cutAt, upAfter = 80, 20, 50
	for i := 1; i <= 10; i++ {
		sender.send(fmt.Sprintf(`{"content":"num %d"}`, i))
	}
	page.waitFor(t, "the page shows num 10", hasMessageJS("sam", "num 10", "chat"))

	var sent atomic.Int64
	sent.Store(10)
	done := make(chan struct{})
	go func() { // numbered messages keep coming, before, during and after the cut
		defer close(done)
		for i := 11; i <= total; i++ {
			sender.send(fmt.Sprintf(`{"content":"num %d"}`, i))
			sent.Store(int64(i))
			time.Sleep(40 * time.Millisecond)
		}
	}()

	page.waitFor(t, fmt.Sprintf("the page shows num %d", cutAt), hasMessageJS("sam", fmt.Sprintf("num %d", cutAt), "chat"))
	before := len(proxy.upgrades())
	proxy.cut(true) // close every connection and refuse new ones for a while
	page.waitFor(t, "the page notices the lost connection",
		`document.getElementById('status').textContent.includes('reconnecting')`)
	eventually(t, e2eWait, "messages sent while the page is cut off, and a refused reconnect", func() bool {
		return sent.Load() >= upAfter && proxy.refused() > 0
	})
	proxy.cut(false)

	<-done
	sender.send(`{"content":"end"}`)
	page.waitFor(t, "the page shows the last message", hasMessageJS("sam", "end", "chat"))

	checkResumed(t, page, proxy, before, total)
	page.check(t, "the page is connected", `document.getElementById('status').textContent === 'connected'`)
	page.do(t, chromedp.SendKeys(chromedp.ID("message"), "pat is back"+kb.Enter))
	sender.waitFor(chatMsg{"pat", "pat is back"})
	page.noConsoleErrors(t)
}

func TestE2EResumeAfterTheServerIsKilled(t *testing.T) {
	needChromium(t)
	srv := startGochat(t, gochatOpts{})
	addr := srv.addr
	proxy := startProxy(t, addr)
	browser := newBrowser(t)

	page := openTabAt(t, browser, "page", "http://"+proxy.addr()+"/#k", false)
	page.do(t, chromedp.SendKeys(chromedp.ID("username"), "kate"+kb.Enter))
	page.waitJoined(t, "kate")

	sender := joinChat(t, "ws://"+addr+"/ws?room=k", "sam")
	for i := 1; i <= 5; i++ {
		sender.send(fmt.Sprintf(`{"content":"k%d"}`, i))
	}
	page.waitFor(t, "the page shows k5", hasMessageJS("sam", "k5", "chat"))
	page.do(t, chromedp.SendKeys(chromedp.ID("message"), "kate before"+kb.Enter))
	sender.waitFor(chatMsg{"kate", "kate before"})
	// The page shows its own message too before it is cut off: otherwise
	// the echo could be lost with the connection, and the resume can't
	// bring it back (the restarted server has no history).
	page.waitFor(t, "the page shows kate before", hasMessageJS("kate", "kate before", "chat"))

	// The page stays away (the proxy refuses it) until the restarted server
	// has had messages of its own: the page must get those, once, after a
	// visible note that the ones before could not be replayed.
	proxy.cut(true)
	t.Logf("gochat stopped: %s", srv.stop(t, syscall.SIGKILL))
	page.waitFor(t, "the page notices the lost connection",
		`document.getElementById('status').textContent.includes('reconnecting')`)
	startGochat(t, gochatOpts{addr: addr}) // the restarted server; its cleanup stops it
	sender = joinChat(t, "ws://"+addr+"/ws?room=k", "sam")
	for i := 6; i <= 10; i++ {
		sender.send(fmt.Sprintf(`{"content":"k%d"}`, i))
	}
	sender.waitFor(chatMsg{"sam", "k10"})
	proxy.cut(false)

	page.waitFor(t, "the page shows k10", hasMessageJS("sam", "k10", "chat"))
	page.waitFor(t, "the page is connected", `document.getElementById('status').textContent === 'connected'`)
	page.do(t, chromedp.SendKeys(chromedp.ID("message"), "kate after"+kb.Enter))
	sender.waitFor(chatMsg{"kate", "kate after"})
	sender.send(`{"content":"k11"}`)
	page.waitFor(t, "the page shows k11", hasMessageJS("sam", "k11", "chat"))

	var got []string
	gaps, gapAt, k6At := 0, -1, -1
	for i, m := range page.messages(t) {
		switch {
		case strings.Contains(m.Class, "gap"):
			gaps++
			gapAt = i
		case m.User == "sam" || m.User == "kate":
			got = append(got, m.Content)
			if m.Content == "k6" {
				k6At = i
			}
		}
	}
	want := []string{"k1", "k2", "k3", "k4", "k5", "kate before", "k6", "k7", "k8", "k9", "k10", "kate after", "k11"}
	if !slices.Equal(got, want) {
		t.Errorf("the page shows %q, want each exactly once in order: %q", got, want)
	}
	if gaps != 1 || gapAt > k6At {
		t.Errorf("want one gap note before k6; %d gap notes, at %d, k6 at %d\n%s", gaps, gapAt, k6At, page.dump())
	}
	page.check(t, "the gap note says messages were missed",
		`[...document.querySelectorAll('#messages li.gap')].some(li => li.textContent.includes('missed'))`)
	page.waitMembers(t, "kate", "sam")
	page.screenshot(t, "resume-killed")
	page.noConsoleErrors(t)
}

// ---- page helpers -------------------------------------------------------------

// e2eItem is one #messages item as the page shows it.
type e2eItem struct {
	User    string `json:"user"`
	Content string `json:"content"`
	Class   string `json:"class"`
}

// messages reads every item of #messages, in order.
func (tb *e2eTab) messages(t *testing.T) []e2eItem {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, e2eWait)
	defer cancel()
	items, err := chromedp.Run(ctx, chromedp.Evaluate[[]e2eItem](`Array.from(document.querySelectorAll('#messages li')).map(li => {
		const u = li.querySelector('.user'), c = li.querySelector('.content');
		return {user: u ? u.textContent : '', content: c ? c.textContent : '', class: li.className};
	})`))
	if err != nil {
		t.Fatalf("%s: reading messages: %v\n%s", tb.name, err, tb.dump())
	}
	return items
}

// membersWait bounds how long who-is-here may lag: well below the page's
// 30 s safety-net refresh, so only a refresh on the join/leave notice or on
// the (re)connect itself passes.
const membersWait = 8 * time.Second

// waitMembers waits until who-is-here lists exactly these names, in order.
func (tb *e2eTab) waitMembers(t *testing.T, names ...string) {
	t.Helper()
	want, _ := json.Marshal(names)
	tb.waitWithin(t, membersWait, "who is here lists "+strings.Join(names, ", "),
		`JSON.stringify(Array.from(document.querySelectorAll('#members li')).map(li => li.textContent)) === `+
			jsString(string(want)))
}

func (tb *e2eTab) noConsoleErrors(t *testing.T) {
	t.Helper()
	for _, m := range tb.consoleMessages() {
		if m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
			t.Errorf("%s: %s", tb.name, m)
		}
	}
}

// ---- a TCP proxy that can cut the page off ---------------------------------------

// tcpProxy forwards loopback TCP connections to target, both ways. cut(true)
// closes every connection it carries and refuses new ones (accepted, then
// closed at once) until cut(false).
type tcpProxy struct {
	t  *testing.T
	ln net.Listener

	mu      sync.Mutex
	target  string
	conns   map[net.Conn]struct{}
	down    bool
	nRefuse int
	lines   []string // the request line of each upgrade to /ws
	wg      sync.WaitGroup
}

func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{t: t, ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.closeAll()
		p.wg.Wait()
	})
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		if down {
			p.nRefuse++
		}
		p.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		p.wg.Add(1)
		go p.forward(c)
	}
}

func (p *tcpProxy) forward(c net.Conn) {
	defer p.wg.Done()
	p.mu.Lock()
	target := p.target
	p.mu.Unlock()
	s, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	if !p.track(c, s) {
		return
	}
	var once sync.Once
	closeBoth := func() { once.Do(func() { c.Close(); s.Close(); p.untrack(c, s) }) }
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer closeBoth()
		_, _ = io.Copy(c, s)
	}()
	defer closeBoth()
	// The first read carries the request line: keep it if it is an upgrade.
	buf := make([]byte, 32<<10)
	n, err := c.Read(buf)
	if n > 0 {
		if line, _, _ := strings.Cut(string(buf[:n]), "\r\n"); strings.HasPrefix(line, "GET /ws") {
			p.mu.Lock()
			p.lines = append(p.lines, line)
			p.mu.Unlock()
		}
		if _, werr := s.Write(buf[:n]); werr != nil {
			return
		}
	}
	if err != nil {
		return
	}
	_, _ = io.Copy(s, c)
}

// track registers a connection pair; false (both closed) if the proxy is down.
func (p *tcpProxy) track(c, s net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		c.Close()
		s.Close()
		return false
	}
	p.conns[c], p.conns[s] = struct{}{}, struct{}{}
	return true
}

func (p *tcpProxy) untrack(c, s net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	delete(p.conns, s)
}

func (p *tcpProxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// cut(true) closes every carried connection and refuses new ones;
// cut(false) lets connections through again.
func (p *tcpProxy) cut(down bool) {
	p.mu.Lock()
	p.down = down
	p.mu.Unlock()
	if down {
		p.closeAll()
	}
}

// retarget sends new connections to target from now on.
func (p *tcpProxy) retarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// refused is how many connections were refused while cut.
func (p *tcpProxy) refused() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nRefuse
}

// upgrades are the request lines of the WebSocket upgrades carried so far.
func (p *tcpProxy) upgrades() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// A page in a cluster whose node stops (a rolling deploy): the page, behind
// a proxy that now sends it to another node, reconnects there with since
// and shows every message exactly once, in order: history and resume come
// from the cluster, with the same ids on every node.
func TestE2EClusterPageMovesToAnotherNode(t *testing.T) {
	needChromium(t)
	ns := startNATS(t, -1)
	args := []string{"-nats", ns.ClientURL(), "-rate", "100", "-burst", "100"}
	a := startGochat(t, gochatOpts{args: args})
	b := startGochat(t, gochatOpts{args: args})
	for _, p := range []*gochatProc{a, b} {
		eventually(t, e2eWait, "the node joined the cluster", func() bool {
			return p.metric("gochat_cluster_connected") == 1 && p.metric("gochat_cluster_degraded") == 0
		})
	}
	proxy := startProxy(t, a.addr)
	browser := newBrowser(t)
	page := openTabAt(t, browser, "page", "http://"+proxy.addr()+"/#r", false)
	page.do(t, chromedp.SendKeys(chromedp.ID("username"), "pat"+kb.Enter))
	page.waitJoined(t, "pat")

	sender := joinChat(t, "ws://"+b.addr+"/ws?room=r", "sam") // on the other node
	page.waitFor(t, "the page sees sam join from the other node", hasMessageJS("System", "sam joined the chat", "system"))

	const total, stopAt = 60, 20
	var sent atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= total; i++ {
			sender.send(fmt.Sprintf(`{"content":"num %d"}`, i))
			sent.Store(int64(i))
			time.Sleep(40 * time.Millisecond)
		}
	}()
	page.waitFor(t, fmt.Sprintf("the page shows num %d", stopAt), hasMessageJS("sam", fmt.Sprintf("num %d", stopAt), "chat"))
	before := len(proxy.upgrades())
	proxy.retarget(b.addr)
	if status := a.stop(t, syscall.SIGTERM); status != "exit status 0" && status != "exited 0" {
		t.Logf("node A: %s", status)
	}
	<-done
	sender.send(`{"content":"end"}`)
	page.waitFor(t, "the page shows the last message", hasMessageJS("sam", "end", "chat"))

	checkResumed(t, page, proxy, before, total)
	page.do(t, chromedp.SendKeys(chromedp.ID("message"), "pat on B"+kb.Enter))
	sender.waitFor(chatMsg{"pat", "pat on B"})
	page.noConsoleErrors(t)
}

// checkResumed requires that the page shows sam's "num 1" to "num total"
// exactly once each, in order, with no gap note, and that every upgrade
// through the proxy after the first before was a resume (since=): how the
// page got there is logged (the counts are the proof).
func checkResumed(t *testing.T, page *e2eTab, proxy *tcpProxy, before, total int) {
	t.Helper()
	var want, got []string
	for i := 1; i <= total; i++ {
		want = append(want, fmt.Sprintf("num %d", i))
	}
	for _, m := range page.messages(t) {
		if m.User == "sam" && strings.HasPrefix(m.Content, "num ") {
			got = append(got, m.Content)
		}
		if strings.Contains(m.Class, "gap") {
			t.Errorf("a gap note although history reached back: %+v", m)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("the page shows %d numbered messages, want each of %d exactly once in order:\n got %q", len(got), total, got)
	}
	ups := proxy.upgrades()
	t.Logf("upgrades through the proxy: %q", ups)
	if len(ups) <= before {
		t.Fatalf("the page never reconnected through the proxy")
	}
	for _, u := range ups[before:] {
		if !strings.Contains(u, "since=") {
			t.Errorf("a reconnect without since: %q", u)
		}
	}
}
