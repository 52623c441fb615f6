package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// progress prints a live status line to stderr once per second. On a
// terminal the line is redrawn in place with '\r'; otherwise (CI logs, a
// file) a plain line is printed every few seconds so the log stays short.
type progress struct {
	f     *fleet
	w     io.Writer
	tty   bool
	phase atomic.Value // string
	stop  chan struct{}
	done  chan struct{}
}

// startProgress starts the ticker; w == nil disables it (tests, -quiet).
func startProgress(f *fleet, w io.Writer) *progress {
	p := &progress{f: f, w: w, stop: make(chan struct{}), done: make(chan struct{})}
	p.phase.Store("connect")
	if w == nil {
		close(p.done)
		return p
	}
	if file, ok := w.(*os.File); ok {
		if st, err := file.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	go p.run()
	return p
}

func (p *progress) setPhase(s string) { p.phase.Store(s) }

func (p *progress) run() {
	defer close(p.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	every := 5
	if p.tty {
		every = 1
	}
	var lastDel, lastNot uint64
	last := time.Now()
	for tick := 1; ; tick++ {
		select {
		case <-p.stop:
			if p.tty {
				fmt.Fprintln(p.w)
			}
			return
		case now := <-t.C:
			if !p.tty && tick%every != 0 {
				continue
			}
			alive, del, not, sent := p.f.totals()
			dt := now.Sub(last).Seconds()
			line := fmt.Sprintf("[%s] connected %d/%d failed %d alive %d | sent %d | deliveries %d (%.0f/s) | notices %d (%.0f/s)",
				p.phase.Load(), p.f.connected.Load(), p.f.n, p.f.failed.Load(), alive,
				sent, del, float64(del-lastDel)/dt, not, float64(not-lastNot)/dt)
			lastDel, lastNot, last = del, not, now
			if p.tty {
				fmt.Fprintf(p.w, "\r%-*s", 110, line)
			} else {
				fmt.Fprintln(p.w, strings.TrimSpace(line))
			}
		}
	}
}

// end stops the ticker and waits for it, so nothing is printed after the
// final report starts.
func (p *progress) end() {
	select {
	case <-p.done:
		return
	default:
	}
	close(p.stop)
	<-p.done
}
