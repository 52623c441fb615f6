package e2e

// The README's wscat session, replayed with the real wscat (npm install -g
// wscat) against the real binary. wscat reads a terminal: with a pipe for
// stdin it drops lines typed before the connection opens and prints no
// "Connected" line to wait for, so each wscat runs on a pseudo-terminal, as
// on a user's screen.
//
// Run from server/internal/e2e:  go test -run Wscat -v .
// Set GOCHAT_WSCAT_SESSION=/some/file to also save the session as shown on
// the two terminals (for the README).

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
)

const (
	wscatWait       = 20 * time.Second // upper bound for any one observable condition (a hang bound)
	wscatSessionEnv = "GOCHAT_WSCAT_SESSION"
	wscatConnected  = "Connected (press CTRL+C to quit)"
)

func TestWscatReadmeSession(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs wscat; skipped with -short")
	}
	wscatBin, err := exec.LookPath("wscat")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("wscat is not on PATH: .ci/run must install it (npm install -g wscat@6)")
		}
		t.Skip("wscat not on PATH (npm install -g wscat)")
	}
	if out, err := exec.Command(wscatBin, "--version").Output(); err == nil {
		t.Logf("wscat %s", strings.TrimSpace(string(out)))
	}

	srv := startGochat(t, gochatOpts{})
	t.Cleanup(func() { t.Logf("gochat stopped with SIGINT: %s", srv.stop(t, syscall.SIGINT)) })
	url := "ws://" + srv.addr + "/ws"

	// Terminal 1: alice.
	alice := startWscat(t, "alice", wscatBin, url)
	alice.waitLine(t, wscatConnected)
	alice.typeLine(t, `{"username":"alice","content":"Hello everyone!"}`)
	alice.expect(t,
		`{"username":"alice","content":"Hello everyone!"}`,
		`{"username":"System","content":"alice joined the chat"}`)

	// Terminal 2: bob.
	bob := startWscat(t, "bob", wscatBin, url)
	bob.waitLine(t, wscatConnected)
	bob.typeLine(t, `{"username":"bob","content":"Hi alice!"}`)
	bob.expect(t,
		`{"username":"bob","content":"Hi alice!"}`,
		`{"username":"System","content":"bob joined the chat"}`)
	alice.expect(t,
		`{"username":"bob","content":"Hi alice!"}`,
		`{"username":"System","content":"bob joined the chat"}`)

	alice.typeLine(t, `{"content":"How is everyone?"}`)
	alice.expect(t, `{"username":"alice","content":"How is everyone?"}`)
	bob.expect(t, `{"username":"alice","content":"How is everyone?"}`)

	// bob presses Ctrl+C.
	bob.interrupt(t)
	alice.expect(t, `{"username":"System","content":"bob left the chat"}`)
	alice.interrupt(t)

	wantAlice := []string{
		`{"username":"alice","content":"Hello everyone!"}`,
		`{"username":"System","content":"alice joined the chat"}`,
		`{"username":"bob","content":"Hi alice!"}`,
		`{"username":"System","content":"bob joined the chat"}`,
		`{"username":"alice","content":"How is everyone?"}`,
		`{"username":"System","content":"bob left the chat"}`,
	}
	wantBob := []string{
		`{"username":"bob","content":"Hi alice!"}`,
		`{"username":"System","content":"bob joined the chat"}`,
		`{"username":"alice","content":"How is everyone?"}`,
	}
	// Nothing else arrived before each one quit.
	for _, c := range []struct {
		term *wscatTerm
		want []string
	}{{alice, wantAlice}, {bob, wantBob}} {
		if got := c.term.incoming(); strings.Join(got, "\n") != strings.Join(c.want, "\n") {
			t.Errorf("%s received:\n%s\nwant:\n%s", c.term.name, strings.Join(got, "\n"), strings.Join(c.want, "\n"))
		}
	}
	if t.Failed() {
		return
	}

	// The session as it appears on the two terminals, for the README.
	var b strings.Builder
	for _, term := range []*wscatTerm{alice, bob} {
		fmt.Fprintf(&b, "# %s's terminal\n$ wscat -c ws://localhost:8080/ws\n%s\n", term.name, strings.Join(term.screen(), "\n"))
		if term == alice {
			b.WriteString("\n")
		}
	}
	// Written only on request: a fixed path (it was /tmp/wscat_session.txt)
	// would be shared by every concurrent run on the machine.
	if file := os.Getenv(wscatSessionEnv); file != "" {
		if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
			t.Errorf("writing %s: %v", file, err)
		}
	}
	t.Logf("session:\n%s", b.String())
}

// wscatTerm is one wscat process on a pseudo-terminal, and what its screen
// shows: the terminal output is replayed through a minimal line-oriented
// terminal (carriage return, erase line, cursor left/right/column, colours
// dropped), so lines are what a user would see.
type wscatTerm struct {
	name  string
	cmd   *exec.Cmd
	ptm   *os.File
	lines chan string // completed screen lines, in order
	done  chan struct{}

	mu sync.Mutex
	vt lineTerm
}

// startWscat runs `wscat -c url` on a new pseudo-terminal; name is who
// sits at it.
func startWscat(t *testing.T, name, bin, url string) *wscatTerm {
	t.Helper()
	cmd := exec.Command(bin, "-c", url)
	cmd.Env = append(os.Environ(), "TERM=xterm")
	ptm, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 200})
	if err != nil {
		t.Fatalf("starting wscat on a pty: %v", err)
	}
	w := &wscatTerm{name: name, cmd: cmd, ptm: ptm, lines: make(chan string, 1024), done: make(chan struct{})}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	go func() {
		defer close(w.done)
		defer close(w.lines)
		buf := make([]byte, 4096)
		for {
			n, err := ptm.Read(buf)
			if n > 0 {
				w.mu.Lock()
				done := w.vt.write(buf[:n])
				w.mu.Unlock()
				for _, l := range done {
					w.lines <- l
				}
			}
			if err != nil {
				return // EIO once wscat has exited and the pty is closed
			}
		}
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
		ptm.Close()
		go func() {
			for range w.lines { // unblock the reader if nobody is reading
			}
		}()
		<-w.done
		if t.Failed() {
			t.Logf("%s's terminal:\n%s", w.name, strings.Join(w.screen(), "\n"))
		}
	})
	return w
}

// nextLine returns the next completed screen line, or fails at the deadline.
func (w *wscatTerm) nextLine(t *testing.T, deadline time.Time, what string) string {
	t.Helper()
	select {
	case l, ok := <-w.lines:
		if !ok {
			t.Fatalf("%s: wscat exited while waiting for %s", w.name, what)
		}
		return l
	case <-time.After(time.Until(deadline)):
		t.Fatalf("%s: no %s within %v", w.name, what, wscatWait)
		return ""
	}
}

// waitLine waits for a screen line equal to want.
func (w *wscatTerm) waitLine(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(wscatWait)
	for {
		l := w.nextLine(t, deadline, fmt.Sprintf("line %q", want))
		if l == want {
			return
		}
		if strings.HasPrefix(l, "error: ") {
			t.Fatalf("%s: wscat: %s", w.name, l)
		}
	}
}

// expect waits for the next incoming frames ("< " lines), which must be
// exactly want, in order.
func (w *wscatTerm) expect(t *testing.T, want ...string) {
	t.Helper()
	for _, frame := range want {
		deadline := time.Now().Add(wscatWait)
		for {
			l := w.nextLine(t, deadline, fmt.Sprintf("frame %s", frame))
			got, ok := strings.CutPrefix(l, "< ")
			if !ok {
				if strings.HasPrefix(l, "error: ") || strings.HasPrefix(l, "Disconnected") {
					t.Fatalf("%s: %s while waiting for %s", w.name, l, frame)
				}
				continue // the echo of a typed line
			}
			if got != frame {
				t.Fatalf("%s received %s, want %s", w.name, got, frame)
			}
			break
		}
	}
}

// typeLine types s and Enter.
func (w *wscatTerm) typeLine(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(w.ptm, s+"\r"); err != nil {
		t.Fatalf("%s: typing: %v", w.name, err)
	}
}

// interrupt presses Ctrl+C and waits for wscat to exit.
func (w *wscatTerm) interrupt(t *testing.T) {
	t.Helper()
	if _, err := w.ptm.Write([]byte{3}); err != nil {
		t.Fatalf("%s: Ctrl+C: %v", w.name, err)
	}
	select {
	case <-w.done:
	case <-time.After(wscatWait):
		t.Fatalf("%s: wscat did not exit on Ctrl+C", w.name)
	}
	for range w.lines {
	}
}

// screen is every line the terminal shows, the unfinished last one included.
func (w *wscatTerm) screen() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := append([]string(nil), w.vt.all...)
	if cur := w.vt.current(); cur != "" {
		out = append(out, cur)
	}
	return out
}

// incoming is every frame shown so far ("< " lines), in order.
func (w *wscatTerm) incoming() []string {
	var out []string
	for _, l := range w.screen() {
		if f, ok := strings.CutPrefix(l, "< "); ok {
			out = append(out, f)
		}
	}
	return out
}

// lineTerm is just enough of a terminal for readline's output: one editable
// line with a cursor, committed on newline.
type lineTerm struct {
	all   []string // committed lines
	line  []byte
	col   int
	esc   []byte // pending escape sequence
	inEsc bool
}

func (v *lineTerm) current() string { return strings.TrimRight(string(v.line), " ") }

// write feeds terminal output and returns the lines it completed.
func (v *lineTerm) write(p []byte) (done []string) {
	for _, b := range p {
		if v.inEsc {
			v.esc = append(v.esc, b)
			if v.escape() {
				v.inEsc, v.esc = false, v.esc[:0]
			}
			continue
		}
		switch b {
		case 0x1b:
			v.inEsc, v.esc = true, append(v.esc[:0], b)
		case '\r':
			v.col = 0
		case '\n':
			l := v.current()
			v.all = append(v.all, l)
			done = append(done, l)
			v.line, v.col = v.line[:0], 0
		case '\b':
			v.col = max(v.col-1, 0)
		case 0x07: // bell
		default:
			if b < 0x20 {
				continue
			}
			for len(v.line) < v.col {
				v.line = append(v.line, ' ')
			}
			if v.col < len(v.line) {
				v.line[v.col] = b
			} else {
				v.line = append(v.line, b)
			}
			v.col++
		}
	}
	return done
}

// escape applies v.esc once complete and reports whether it was.
func (v *lineTerm) escape() bool {
	e := v.esc
	if len(e) < 2 {
		return false
	}
	if e[1] != '[' {
		return len(e) >= 2 // two-byte escape: ignored
	}
	if len(e) < 3 {
		return false
	}
	final := e[len(e)-1]
	if final < 0x40 || final > 0x7e {
		return false
	}
	param := string(e[2 : len(e)-1])
	n := 0
	fmt.Sscanf(strings.TrimPrefix(param, "?"), "%d", &n)
	switch final {
	case 'D': // cursor left
		v.col = max(v.col-max(n, 1), 0)
	case 'C': // cursor right
		v.col += max(n, 1)
	case 'G': // cursor to column (1-based)
		v.col = max(n, 1) - 1
	case 'K': // erase in line
		switch n {
		case 0:
			if v.col < len(v.line) {
				v.line = v.line[:v.col]
			}
		case 1:
			for i := 0; i < v.col && i < len(v.line); i++ {
				v.line[i] = ' '
			}
		case 2:
			v.line = v.line[:0]
		}
	case 'J': // erase below: the rest of this line
		if n == 0 && v.col < len(v.line) {
			v.line = v.line[:v.col]
		}
	}
	return true
}
