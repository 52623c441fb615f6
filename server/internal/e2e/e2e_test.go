package e2e

// Browser end-to-end test: the real gochat binary, the embedded web page and a
// real headless Chromium (Debian's /usr/bin/chromium), driven with chromedp.
//
// Run from server/internal/e2e:  go test -run E2E -v .
// Set GOCHAT_E2E_SCREENSHOTS=/some/dir to also save PNG screenshots of the tabs.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

const (
	e2eChromium    = "/usr/bin/chromium"
	e2eWait        = 20 * time.Second // upper bound for any one observable condition
	e2ePageTitle   = "gochat"
	e2eHostileText = `<img src=x onerror="document.title='pwned'">`
)

// needChromium skips a browser test in -short mode or without Chromium
// (and fails it in CI, where Chromium must be installed).
func needChromium(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("browser end-to-end test skipped in -short mode")
	}
	if _, err := os.Stat(e2eChromium); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but %s is missing (apt-get install -y chromium): %v", e2eChromium, err)
		}
		t.Skipf("%s not installed; skipping the browser end-to-end test", e2eChromium)
	}
}

func TestE2EBrowserChat(t *testing.T) {
	needChromium(t)

	// Every server process belongs to this test (not to the subtest that
	// restarts it): it runs until the test ends and its output is shown if
	// anything failed.
	srv := startGochat(t, gochatOpts{})
	addr := srv.addr
	base := "http://" + addr

	t.Run("page and assets are served under a strict CSP", func(t *testing.T) {
		checkServedPage(t, base)
	})

	browser := newBrowser(t)
	alice := openTab(t, browser, "alice", base, false)
	bob := openTab(t, browser, "bob", base, true) // phone-sized viewport

	ok := t.Run("two users join and see each other's messages", func(t *testing.T) {
		// alice joins with Enter, bob (on a phone-sized screen) with the button.
		alice.do(t, chromedp.SendKeys(chromedp.ID("username"), "alice"+kb.Enter))
		alice.waitJoined(t, "alice")
		bob.do(t, chromedp.SendKeys(chromedp.ID("username"), "bob"), chromedp.Click(chromedp.ID("join")))
		bob.waitJoined(t, "bob")

		alice.waitFor(t, "alice sees the System notice that bob joined",
			hasMessageJS("System", "bob joined the chat", "system"))

		alice.do(t, chromedp.SendKeys(chromedp.ID("message"), "Hello from alice"+kb.Enter))
		bob.waitFor(t, "bob sees alice's message under her name",
			hasMessageJS("alice", "Hello from alice", "chat"))
		alice.waitFor(t, "alice sees her own message marked as own",
			hasMessageJS("alice", "Hello from alice", "own"))
		bob.check(t, "alice's message is not marked own in bob's tab",
			`!`+findMessageJS("alice", "Hello from alice")+`.classList.contains('own')`)

		bob.do(t, chromedp.SendKeys(chromedp.ID("message"), "Hi alice, bob here"), chromedp.Click(chromedp.ID("send")))
		alice.waitFor(t, "alice sees bob's reply", hasMessageJS("bob", "Hi alice, bob here", "chat"))
		bob.check(t, "the message box is cleared after sending",
			`document.getElementById('message').value === ''`)
		alice.screenshot(t, "1-chat")
		bob.screenshot(t, "1-chat")
	})
	if !ok {
		return
	}

	ok = t.Run("hostile markup in a message renders as plain text", func(t *testing.T) {
		bob.do(t, chromedp.SendKeys(chromedp.ID("message"), e2eHostileText+kb.Enter))
		for _, tb := range []*e2eTab{alice, bob} {
			tb.waitFor(t, tb.name+" sees the markup as literal text", hasMessageJS("bob", e2eHostileText, "chat"))
			tb.check(t, tb.name+" #messages contains the markup literally",
				`document.getElementById('messages').textContent.includes(`+jsString(e2eHostileText)+`)`)
			tb.check(t, tb.name+" has no img element inside #messages",
				`document.querySelectorAll('#messages img').length === 0`)
			tb.check(t, tb.name+" document.title is unchanged",
				`document.title === `+jsString(e2ePageTitle))
		}
		alice.screenshot(t, "2-hostile")
	})
	if !ok {
		return
	}

	t.Run("a refused join shows the error and does not auto-reconnect", func(t *testing.T) {
		carol := openTab(t, browser, "carol", base, false)
		carol.do(t, chromedp.SendKeys(chromedp.ID("username"), "System"+kb.Enter))
		carol.waitFor(t, "the join form comes back with the server's error",
			`(() => { const e = document.getElementById('join-error');
			   return !e.hidden && e.textContent.trim() !== '' &&
			          !document.getElementById('join-view').hidden &&
			          document.getElementById('chat-view').hidden; })()`)
		// The page decides about reconnecting in the same close handler that
		// shows the error, so the status already tells whether a retry is planned.
		carol.check(t, "the status says disconnected, with no reconnect scheduled",
			`document.getElementById('status').textContent === 'disconnected'`)
		carol.check(t, "the rejected name is kept in the form for editing",
			`document.getElementById('username').value === 'System'`)
		carol.screenshot(t, "3-refused")
		carol.close()
	})

	parent := t
	for _, restart := range []struct {
		name string
		sig  syscall.Signal
		tag  string
	}{
		{"the page reconnects and rejoins after a graceful server restart", syscall.SIGTERM, "graceful"},
		{"the page reconnects and rejoins after the server is killed", syscall.SIGKILL, "killed"},
	} {
		ok = t.Run(restart.name, func(t *testing.T) {
			t.Logf("gochat stopped with %v: %s", restart.sig, srv.stop(t, restart.sig))
			for _, tb := range []*e2eTab{alice, bob} {
				tb.waitFor(t, tb.name+" shows it is disconnected and reconnecting",
					`document.getElementById('status').textContent.startsWith('disconnected') &&
					 document.getElementById('status').textContent.includes('reconnecting')`)
			}
			alice.screenshot(t, "4-"+restart.tag+"-down")
			srv = startGochat(t, gochatOpts{addr: addr, owner: parent})
			for _, tb := range []*e2eTab{alice, bob} {
				tb.waitFor(t, tb.name+" is connected again, still in the chat view",
					`document.getElementById('status').textContent === 'connected' &&
					 document.getElementById('join-view').hidden &&
					 !document.getElementById('chat-view').hidden`)
			}
			// bob's message reaching alice proves both rejoined (only joined
			// clients can send or receive), so alice's answer must reach bob.
			bobText := "bob is back (" + restart.tag + ")"
			aliceText := "alice is back (" + restart.tag + ")"
			bob.do(t, chromedp.SendKeys(chromedp.ID("message"), bobText+kb.Enter))
			alice.waitFor(t, "alice receives bob's message after the restart", hasMessageJS("bob", bobText, "chat"))
			alice.do(t, chromedp.SendKeys(chromedp.ID("message"), aliceText+kb.Enter))
			bob.waitFor(t, "bob receives alice's message after the restart", hasMessageJS("alice", aliceText, "chat"))
			alice.waitFor(t, "alice's message after the rejoin is still marked own", hasMessageJS("alice", aliceText, "own"))
			alice.screenshot(t, "5-"+restart.tag+"-back")
			bob.screenshot(t, "5-"+restart.tag+"-back")
		})
		if !ok {
			return
		}
	}

	t.Run("the page ran without script errors or CSP violations", func(t *testing.T) {
		for _, tb := range []*e2eTab{alice, bob} {
			for _, m := range tb.consoleMessages() {
				if m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
					t.Errorf("%s: %s", tb.name, m)
				}
			}
		}
	})
}

// ---- the page over HTTP ---------------------------------------------------

func checkServedPage(t *testing.T, base string) {
	for _, c := range []struct{ path, ctype, body string }{
		{"/", "text/html", `<input id="username"`},
		{"/static/app.js", "javascript", "WebSocket"},
		{"/static/style.css", "text/css", ".system"},
	} {
		resp, err := http.Get(base + c.path)
		if err != nil {
			t.Fatalf("GET %s: %v", c.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: status %d", c.path, resp.StatusCode)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, c.ctype) {
			t.Errorf("GET %s: Content-Type %q, want it to contain %q", c.path, ct, c.ctype)
		}
		if !bytes.Contains(body, []byte(c.body)) {
			t.Errorf("GET %s: body does not contain %q", c.path, c.body)
		}
		if c.path == "/" {
			csp := resp.Header.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'self'", "script-src 'self'", "style-src 'self'"} {
				if !strings.Contains(csp, want) {
					t.Errorf("GET /: Content-Security-Policy %q lacks %q", csp, want)
				}
			}
		}
	}
}

// ---- browser ------------------------------------------------------------------

func newBrowser(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(e2eChromium),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("mute-audio", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
	})
	// The first Run starts the browser; it must not carry a timeout.
	if err := chromedp.Do(browserCtx); err != nil {
		t.Fatalf("starting %s: %v", e2eChromium, err)
	}
	return browserCtx
}

type e2eTab struct {
	name   string
	ctx    context.Context
	cancel context.CancelFunc
	shots  string

	mu      sync.Mutex
	console []chromedp.ConsoleMessage
}

// openTab opens the page in a fresh browser context (its own cookies and
// storage, like a separate user) and collects its console output.
func openTab(t *testing.T, browser context.Context, name, base string, phone bool) *e2eTab {
	t.Helper()
	return openTabAt(t, browser, name, base+"/", phone)
}

// openTabAt is openTab on a full page URL (e.g. with a #room fragment).
func openTabAt(t *testing.T, browser context.Context, name, pageURL string, phone bool) *e2eTab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	tb := &e2eTab{name: name, ctx: ctx, cancel: cancel, shots: os.Getenv("GOCHAT_E2E_SCREENSHOTS")}
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil { // open the tab without a timeout
		t.Fatalf("%s: opening tab: %v", name, err)
	}
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			tb.mu.Lock()
			tb.console = append(tb.console, m)
			tb.mu.Unlock()
		}
	}()
	steps := []chromedp.Action[chromedp.Void]{}
	if phone {
		steps = append(steps, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateTouch, chromedp.EmulateScale(2)))
	}
	steps = append(steps,
		chromedp.Navigate(pageURL),
		chromedp.WaitVisible(chromedp.ID("username")),
	)
	tb.do(t, steps...)
	tb.check(t, "the page title is "+e2ePageTitle, `document.title === `+jsString(e2ePageTitle))
	return tb
}

func (tb *e2eTab) close() { tb.cancel() }

func (tb *e2eTab) do(t *testing.T, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, e2eWait)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v\n%s", tb.name, err, tb.dump())
	}
}

// waitFor polls a JavaScript condition in the page until it is true, up to e2eWait.
func (tb *e2eTab) waitFor(t *testing.T, what, expr string) {
	t.Helper()
	tb.waitWithin(t, e2eWait, what, expr)
}

// waitWithin is waitFor with its own bound d.
func (tb *e2eTab) waitWithin(t *testing.T, d time.Duration, what, expr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, d+5*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](expr,
		chromedp.WithPollingInterval(50*time.Millisecond),
		chromedp.WithPollingTimeout(d)))
	if err != nil {
		t.Fatalf("%s: waiting until %s: %v\n%s", tb.name, what, err, tb.dump())
	}
}

// check evaluates a JavaScript condition once; it must be true now.
func (tb *e2eTab) check(t *testing.T, what, expr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, e2eWait)
	defer cancel()
	ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
	if err != nil {
		t.Fatalf("%s: checking %s: %v\n%s", tb.name, what, err, tb.dump())
	}
	if !ok {
		t.Errorf("%s: expected %s\n%s", tb.name, what, tb.dump())
	}
}

func (tb *e2eTab) waitJoined(t *testing.T, name string) {
	t.Helper()
	tb.waitFor(t, name+" is connected and sees the chat view",
		`document.getElementById('status').textContent === 'connected' &&
		 !document.getElementById('chat-view').hidden &&
		 document.getElementById('join-view').hidden`)
	tb.waitFor(t, name+" sees their own join notice",
		hasMessageJS("System", name+" joined the chat", "system"))
}

func (tb *e2eTab) consoleMessages() []chromedp.ConsoleMessage {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return append([]chromedp.ConsoleMessage(nil), tb.console...)
}

// dump describes the page state for a failure message.
func (tb *e2eTab) dump() string {
	ctx, cancel := context.WithTimeout(tb.ctx, 5*time.Second)
	defer cancel()
	state, err := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify({
		title: document.title,
		status: document.getElementById('status').textContent,
		joinHidden: document.getElementById('join-view').hidden,
		chatHidden: document.getElementById('chat-view').hidden,
		joinError: document.getElementById('join-error').textContent,
		url: location.href,
		room: (document.getElementById('room-label') || {}).textContent,
		members: Array.from(document.querySelectorAll('#members li')).map(li => li.textContent),
		messages: Array.from(document.querySelectorAll('#messages li')).map(li => li.className + ' | ' + li.textContent)
	}, null, 1)`))
	if err != nil {
		state = "(page state unavailable: " + err.Error() + ")"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "--- %s page state: %s\n--- %s console:\n", tb.name, state, tb.name)
	for _, m := range tb.consoleMessages() {
		fmt.Fprintf(&b, "  %s\n", m)
	}
	return b.String()
}

// screenshot saves a PNG of the tab when GOCHAT_E2E_SCREENSHOTS names a directory.
func (tb *e2eTab) screenshot(t *testing.T, step string) {
	t.Helper()
	if tb.shots == "" {
		return
	}
	ctx, cancel := context.WithTimeout(tb.ctx, e2eWait)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err == nil {
		err = os.MkdirAll(tb.shots, 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(tb.shots, step+"-"+tb.name+".png"), png, 0o644)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Logf("%s: screenshot %s: %v", tb.name, step, err)
	}
}

// ---- page queries ---------------------------------------------------------------

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// findMessageJS is a JS expression for the last #messages item with exactly
// this username and content (or null).
func findMessageJS(user, content string) string {
	return `(Array.from(document.querySelectorAll('#messages li')).reverse().find(li => {
		const u = li.querySelector('.user'), c = li.querySelector('.content');
		return u && c && u.textContent === ` + jsString(user) + ` && c.textContent === ` + jsString(content) + `;
	}) || null)`
}

// hasMessageJS is true when such an item exists and carries the CSS class.
func hasMessageJS(user, content, class string) string {
	return `(() => { const li = ` + findMessageJS(user, content) + `;
		return !!li && li.classList.contains(` + jsString(class) + `); })()`
}
