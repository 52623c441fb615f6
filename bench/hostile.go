package main

// Hostile scenarios of issue #13 (RELIABILITY.md 47–49), so that their
// figures are reproducible:
//
//	amplify     -conns readers and -senders senders; each sender bursts
//	            -burst messages of 2,000 '<' (12 KB once JSON-escaped),
//	            -rounds times, 2 s apart (the default -rate 10/-burst 20
//	            allows exactly that). Server RSS peak vs baseline,
//	            evictions, losses.
//	fragmented  -conns clients each send one 16 KB message (whitespace
//	            content: parsed, never broadcast) in 1,024 fragments, all
//	            at once, while a control client echoes and a prober opens
//	            new connections: control echo p99 and upgrade p99.
//	storm20k    -conns clients (default 19,800) connect and join at once
//	            with presence on: drain time, peak server RSS, evictions,
//	            and whether every client was told of every later join, by
//	            name or in a summary ("a, b and 12 others joined the chat").
//
// These scenarios keep their own lightweight clients and print their own
// report (text, or one JSON object with -json); they share the connection
// flags and the server sampling of the other scenarios.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// hostileFlags are the flags of the hostile scenarios.
func hostileFlags(def int, senders bool) func(*flag.FlagSet, *Config) {
	return func(fs *flag.FlagSet, c *Config) {
		fs.Lookup("conns").DefValue = strconv.Itoa(def)
		c.Conns = def
		fs.DurationVar(&c.Drain, "drain", 20*time.Second, "give up waiting for deliveries after this long without progress")
		if senders {
			fs.IntVar(&c.Senders, "senders", 20, "clients that burst '<' content (they also read)")
			fs.IntVar(&hostileBurst, "burst", 20, "messages per sender per round (the server's default -burst is 20)")
			fs.IntVar(&hostileRounds, "rounds", 2, "bursts per sender, 2 s apart")
		}
	}
}

var hostileBurst, hostileRounds int

// hclient is a minimal chat client: gobwas/ws handshake, masked frames out,
// a reader goroutine that counts what arrives.
type hclient struct {
	id  int
	nc  net.Conn
	br  *bufio.Reader
	wmu sync.Mutex

	chats     atomic.Uint64 // chat messages from the run's senders
	lastAt    atomic.Int64  // unix nanos of the last counted frame
	closeCode atomic.Int32  // close code from the server; -1 ended without one
	ended     atomic.Bool

	// storm20k: join notices, by name (bitset) and in summaries.
	seen    []uint64
	named   atomic.Uint64
	counted atomic.Uint64 // clients told of (named + summarized)
	dups    atomic.Uint64
	onText  func(c *hclient, p []byte) // optional extra handler
}

func hdial(ctx context.Context, cfg *Config, id int) (*hclient, error) {
	nd := net.Dialer{Timeout: cfg.Timeout}
	if cfg.LocalAddrs > 1 {
		nd.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+id%cfg.LocalAddrs))}
	}
	d := ws.Dialer{Timeout: cfg.Timeout, NetDial: nd.DialContext}
	conn, br, _, err := d.Dial(ctx, cfg.URL)
	if err != nil {
		return nil, err
	}
	if br == nil {
		br = bufio.NewReaderSize(conn, readBufSize)
	}
	return &hclient{id: id, nc: conn, br: br}, nil
}

func (c *hclient) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(30 * time.Second))
	_, err := c.nc.Write(b)
	return err
}

// appendFragment appends a masked client frame with the FIN bit as given.
func appendFragment(dst []byte, op ws.OpCode, fin bool, payload []byte) []byte {
	start := len(dst)
	dst = appendFrame(dst, op, payload)
	if !fin {
		dst[start] &^= 0x80
	}
	return dst
}

// read counts frames until the connection ends.
func (c *hclient) read(wg *sync.WaitGroup) {
	defer wg.Done()
	defer c.ended.Store(true)
	c.closeCode.Store(-1)
	buf := make([]byte, 0, 256)
	for {
		h, err := ws.ReadHeader(c.br)
		if err != nil {
			return
		}
		if h.Length > maxFrame {
			return
		}
		buf = slices.Grow(buf[:0], int(h.Length))[:h.Length]
		if _, err := io.ReadFull(c.br, buf); err != nil {
			return
		}
		switch h.OpCode {
		case ws.OpPing:
			c.write(appendFrame(nil, ws.OpPong, buf))
		case ws.OpClose:
			code := 1005
			if len(buf) >= 2 {
				code = int(buf[0])<<8 | int(buf[1])
			}
			c.closeCode.Store(int32(code))
			c.write(appendFrame(nil, ws.OpClose, buf[:min(len(buf), 2)]))
			return
		case ws.OpText:
			if c.onText != nil {
				c.onText(c, buf)
			}
		}
	}
}

// connectAll dials n clients with cfg.DialWorkers in flight, writes first
// (if not nil) on each, and starts their readers.
func connectAll(ctx context.Context, cfg *Config, n int, first func(id int) []byte, setup func(*hclient), wg *sync.WaitGroup) ([]*hclient, int, error) {
	clients := make([]*hclient, n)
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr atomic.Value
	var dwg sync.WaitGroup
	for range max(1, cfg.DialWorkers) {
		dwg.Add(1)
		go func() {
			defer dwg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, err := hdial(ctx, cfg, i)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				if setup != nil {
					setup(c)
				}
				wg.Add(1)
				go c.read(wg)
				if first != nil {
					if err := c.write(first(i)); err != nil {
						failed.Add(1)
						continue
					}
				}
				clients[i] = c
			}
		}()
	}
	dwg.Wait()
	if e, ok := firstErr.Load().(string); ok && failed.Load() > 0 {
		fmt.Fprintf(os.Stderr, "bench: %d dials failed (first: %s)\n", failed.Load(), e)
	}
	return clients, int(failed.Load()), ctx.Err()
}

func closeClients(clients []*hclient, wg *sync.WaitGroup) {
	for _, c := range clients {
		if c != nil {
			c.nc.Close()
		}
	}
	wg.Wait()
}

// rssWatch samples the server's VmRSS every 50 ms; VmHWM (the kernel's
// own peak) is read at the end too, and the larger is reported.
type rssWatch struct {
	pid  int
	peak atomic.Uint64
	quit chan struct{}
	done chan struct{}
}

// untilStopped calls step with 0, 1, 2, ... until stop is closed (looked
// at before each call), then marks wg done.
func untilStopped(wg *sync.WaitGroup, stop <-chan struct{}, step func(i int)) {
	defer wg.Done()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		step(i)
	}
}

func watchRSS(pid int) *rssWatch {
	w := &rssWatch{pid: pid, quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			if r := procRSS(pid); r != nil && *r > w.peak.Load() {
				w.peak.Store(*r)
			}
			select {
			case <-w.quit:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *rssWatch) stop() uint64 {
	close(w.quit)
	<-w.done
	return max(w.peak.Load(), procStatusKB(w.pid, "VmHWM:")*1024)
}

func procStatusKB(pid int, key string) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte(key)); ok {
			if f := bytes.Fields(rest); len(f) > 0 {
				v, _ := strconv.ParseUint(string(f[0]), 10, 64)
				return v
			}
		}
	}
	return 0
}

// hostileReport is what the hostile scenarios print.
type hostileReport struct {
	Scenario string         `json:"scenario"`
	URL      string         `json:"url"`
	Figures  map[string]any `json:"figures"`
	order    []string
}

func (r *hostileReport) set(k string, v any) {
	if r.Figures == nil {
		r.Figures = map[string]any{}
	}
	if _, ok := r.Figures[k]; !ok {
		r.order = append(r.order, k)
	}
	r.Figures[k] = v
}

func (r *hostileReport) print(cfg *Config) {
	if cfg.JSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(r)
		return
	}
	fmt.Printf("scenario  %s  %s\n", r.Scenario, r.URL)
	for _, k := range r.order {
		fmt.Printf("%-28s %v\n", k, r.Figures[k])
	}
}

func mb(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// serverMetric reads one unlabelled series from /metrics (NaN-free: 0 when absent).
func serverMetric(ctx context.Context, smp *sampler, name string) float64 {
	if smp.metricsURL == "" {
		return 0
	}
	return smp.metrics(ctx)[name]
}

// ---- amplify --------------------------------------------------------------

func runAmplify(ctx context.Context, cfg *Config) (Result, error) {
	rep := &hostileReport{Scenario: "amplify", URL: cfg.URL}
	smp := newSampler(cfg.PID, cfg.MetricsURL)
	n, s := cfg.Conns, cfg.Senders
	base := uint64(0)
	if cfg.PID > 0 {
		base = deref(procRSS(cfg.PID))
	}
	slow0 := serverMetric(ctx, smp, "gochat_slow_consumer_disconnects_total")
	runID := fmt.Sprintf("a%d", time.Now().UnixNano()%1e6)
	senderTag := []byte(`"username":"` + runID + "s")
	var refused atomic.Uint64
	count := func(c *hclient, p []byte) {
		if c.id >= n && bytes.HasPrefix(p, []byte(`{"username":"System","content":"Error: `)) {
			refused.Add(1) // the sender's own rate limit or Server busy: never broadcast
			return
		}
		if bytes.Contains(p, senderTag) {
			c.chats.Add(1)
			c.lastAt.Store(time.Now().UnixNano())
		}
	}
	var wg sync.WaitGroup
	total := n + s
	clients, failed, err := connectAll(ctx, cfg, total, func(i int) []byte {
		name := fmt.Sprintf("%sr%d", runID, i)
		if i >= n {
			name = fmt.Sprintf("%ss%d", runID, i-n)
		}
		return appendFrame(nil, ws.OpText, []byte(`{"username":"`+name+`"}`))
	}, func(c *hclient) { c.onText = count }, &wg)
	defer closeClients(clients, &wg)
	if err != nil {
		return Result{}, err
	}
	time.Sleep(time.Second) // joins and their notices settle
	watch := watchRSS(cfg.PID)
	t0 := time.Now()
	var swg sync.WaitGroup
	var sendErrs atomic.Int64
	for i := n; i < total; i++ {
		c := clients[i]
		if c == nil {
			continue
		}
		swg.Add(1)
		go func() {
			defer swg.Done()
			for round := range hostileRounds {
				if round > 0 {
					time.Sleep(2500 * time.Millisecond) // 20 tokens back at 10/s, and a margin
				}
				var b []byte
				for j := range hostileBurst {
					prefix := fmt.Sprintf("%d-%d-%d ", c.id, round, j)
					b = appendFrame(b, ws.OpText, []byte(`{"content":"`+prefix+strings.Repeat("<", 2000-len(prefix))+`"}`))
				}
				if c.write(b) != nil {
					sendErrs.Add(1)
					return
				}
			}
		}()
	}
	swg.Wait()
	sentN := uint64(s * hostileBurst * hostileRounds)
	lastProgress, lastSum := time.Now(), uint64(0)
	var expected uint64
	for ctx.Err() == nil {
		expected = sentN - refused.Load()
		sum, done := uint64(0), true
		for _, c := range clients {
			if c != nil && !c.ended.Load() {
				got := c.chats.Load()
				sum += got
				done = done && got >= expected
			}
		}
		if done || time.Since(lastProgress) > cfg.Drain {
			break
		}
		if sum != lastSum {
			lastSum, lastProgress = sum, time.Now()
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(t0)
	if time.Since(lastProgress) > cfg.Drain {
		took -= cfg.Drain
	}
	peak := watch.stop()
	var evicted, alive int
	var lost uint64
	codes := map[int32]int{}
	for _, c := range clients {
		if c == nil {
			continue
		}
		if c.ended.Load() {
			evicted++
			codes[c.closeCode.Load()]++
			continue
		}
		alive++
		lost += expected - min(expected, c.chats.Load())
	}
	rep.set("readers / senders", fmt.Sprintf("%d / %d  (%d dials failed)", n, s, failed))
	rep.set("sent", fmt.Sprintf("%d messages of 2,000 '<' (%d B escaped) in %d round(s) of %d per sender, %d refused with an Error; %d send errors",
		sentN, len(`{"username":"`)+6*2000, hostileRounds, hostileBurst, refused.Load(), sendErrs.Load()))
	rep.set("delivered in", took.Round(time.Millisecond).String()+"  (from the first burst; the rounds are 2.5 s apart)")
	rep.set("server RSS baseline", mb(base))
	rep.set("server RSS peak", mb(peak))
	rep.set("server RSS peak - baseline", mb(peak-min(peak, base)))
	rep.set("evicted (connection ended)", fmt.Sprintf("%d  close codes %v", evicted, codes))
	rep.set("server slow-consumer closes", serverMetric(ctx, smp, "gochat_slow_consumer_disconnects_total")-slow0)
	rep.set("lost (alive clients)", fmt.Sprintf("%d of %d expected", lost, expected*uint64(alive)))
	rep.print(cfg)
	return Result{}, nil
}

// ---- fragmented -----------------------------------------------------------

func runFragmented(ctx context.Context, cfg *Config) (Result, error) {
	rep := &hostileReport{Scenario: "fragmented", URL: cfg.URL}
	smp := newSampler(cfg.PID, cfg.MetricsURL)
	runID := fmt.Sprintf("f%d", time.Now().UnixNano()%1e6)
	var wg sync.WaitGroup
	n := cfg.Conns
	clients, failed, err := connectAll(ctx, cfg, n, func(i int) []byte {
		return appendFrame(nil, ws.OpText, []byte(fmt.Sprintf(`{"username":"%s%d"}`, runID, i)))
	}, nil, &wg)
	defer closeClients(clients, &wg)
	if err != nil {
		return Result{}, err
	}
	// The controls: their own messages, echoed back by the broadcast.
	const controls = 8
	type control struct {
		c      *hclient
		echoes chan struct{}
	}
	var ctls []control
	for k := range controls {
		c, err := hdial(ctx, cfg, n+k)
		if err != nil {
			return Result{}, err
		}
		tag := []byte(fmt.Sprintf(`"username":"%sctl%d"`, runID, k))
		ctl := control{c, make(chan struct{}, 1024)}
		c.onText = func(c *hclient, p []byte) {
			if bytes.Contains(p, tag) {
				ctl.echoes <- struct{}{}
			}
		}
		wg.Add(1)
		go c.read(&wg)
		defer c.nc.Close()
		c.write(appendFrame(nil, ws.OpText, []byte(fmt.Sprintf(`{"username":"%sctl%d"}`, runID, k))))
		ctls = append(ctls, ctl)
	}
	time.Sleep(time.Second) // joins and their notices settle

	// 16 KB of JSON (whitespace content: parsed and checked, never
	// broadcast) in 1,024 fragments of 16 bytes.
	const size, frags = 16 << 10, 1024
	msg := []byte(`{"content":"` + strings.Repeat(" ", size-len(`{"content":""}`)) + `"}`)
	var blast []byte
	for i := range frags {
		op := ws.OpContinuation
		if i == 0 {
			op = ws.OpText
		}
		blast = appendFragment(blast, op, i == frags-1, msg[i*size/frags:(i+1)*size/frags])
	}
	in0 := serverMetric(ctx, smp, "gochat_messages_received_total")

	stop := make(chan struct{})
	var mwg sync.WaitGroup
	type obs struct {
		at  time.Time
		dur time.Duration
	}
	var echoAll, upAll []obs
	var echoLost, upgradeFailed int
	var umu sync.Mutex
	for _, ctl := range ctls {
		mwg.Add(1)
		go untilStopped(&mwg, stop, func(seq int) { // control echo, 8 per second (the default -rate is 10)
			t := time.Now()
			ctl.c.write(appendFrame(nil, ws.OpText, []byte(fmt.Sprintf(`{"content":"e%d"}`, seq))))
			select {
			case <-ctl.echoes:
				umu.Lock()
				echoAll = append(echoAll, obs{t, time.Since(t)})
				umu.Unlock()
			case <-time.After(10 * time.Second):
				umu.Lock()
				echoLost++
				umu.Unlock()
			}
			time.Sleep(max(0, 125*time.Millisecond-time.Since(t)))
		})
	}
	mwg.Add(4)
	for g := range 4 {
		go untilStopped(&mwg, stop, func(i int) { // upgrades: dial, 101, close; four at a time
			t := time.Now()
			c, err := hdial(ctx, cfg, n+1+4*i+g)
			umu.Lock()
			if err != nil {
				upgradeFailed++
			} else {
				upAll = append(upAll, obs{t, time.Since(t)})
				c.nc.Close()
			}
			umu.Unlock()
			time.Sleep(5 * time.Millisecond)
		})
	}
	time.Sleep(200 * time.Millisecond) // a baseline before the blast
	t0 := time.Now()
	var bwg sync.WaitGroup
	var sendErrs atomic.Int64
	for _, c := range clients {
		if c == nil {
			continue
		}
		bwg.Add(1)
		go func() {
			defer bwg.Done()
			if c.write(blast) != nil {
				sendErrs.Add(1)
			}
		}()
	}
	bwg.Wait()
	sent := time.Since(t0)
	// Until the server has taken every fragmented message (or -drain).
	var handled float64
	for time.Since(t0) < cfg.Drain && ctx.Err() == nil {
		handled = serverMetric(ctx, smp, "gochat_messages_received_total") - in0
		if smp.metricsURL == "" || handled >= float64(n+controls) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(t0)
	time.Sleep(200 * time.Millisecond)
	close(stop)
	mwg.Wait()
	// Only what started while the server was taking the blast counts.
	during := func(all []obs) (d []time.Duration) {
		for _, o := range all {
			if !o.at.Before(t0) && !o.at.After(t0.Add(took)) {
				d = append(d, o.dur)
			}
		}
		return d
	}
	echo, upgrade := during(echoAll), during(upAll)
	var closed int
	for _, c := range clients {
		if c != nil && c.ended.Load() {
			closed++
		}
	}
	rep.set("clients", fmt.Sprintf("%d  (%d dials failed, %d send errors, %d closed by the server)", n, failed, sendErrs.Load(), closed))
	rep.set("blast", fmt.Sprintf("%d messages × %d B in %d fragments (%d B on the wire each), written in %v",
		n, size, frags, len(blast), sent.Round(time.Millisecond)))
	rep.set("server handled", fmt.Sprintf("%.0f messages (incl. control echoes) in %v", handled, took.Round(time.Millisecond)))
	rep.set("control echo ms", quantiles(echo)+fmt.Sprintf("  (%d lost)", echoLost))
	rep.set("upgrade ms", quantiles(upgrade)+fmt.Sprintf("  (%d failed)", upgradeFailed))
	rep.print(cfg)
	return Result{}, nil
}

func quantiles(d []time.Duration) string {
	if len(d) == 0 {
		return "no samples"
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	q := func(p float64) float64 { return float64(d[min(len(d)-1, int(p*float64(len(d))))]) / 1e6 }
	return fmt.Sprintf("p50 %.2f  p99 %.2f  max %.2f  (%d samples)", q(0.5), q(0.99), float64(d[len(d)-1])/1e6, len(d))
}

// ---- storm20k -------------------------------------------------------------

var noticeRe = regexp.MustCompile(`^(.+?)(?:(?:, (.+?) and ([0-9,]+) others?)| and (.+?))? joined the chat$`)

func runStorm20k(ctx context.Context, cfg *Config) (Result, error) {
	rep := &hostileReport{Scenario: "storm20k", URL: cfg.URL}
	n := cfg.Conns
	runID := fmt.Sprintf("z%d", time.Now().UnixNano()%1e6)
	prefix := runID + "c"
	onText := func(c *hclient, p []byte) {
		// Names are ASCII and summaries have no escapes: slice, don't decode.
		content, ok := bytes.CutPrefix(p, []byte(`{"username":"System","content":"`))
		if !ok || !bytes.HasSuffix(content, []byte(`joined the chat"}`)) {
			return
		}
		sm := noticeRe.FindStringSubmatch(string(content[:len(content)-2]))
		if sm == nil {
			return
		}
		var names []string
		extra := 0
		switch {
		case sm[3] != "":
			k, _ := strconv.Atoi(strings.ReplaceAll(sm[3], ",", ""))
			names, extra = []string{sm[1], sm[2]}, k
		case sm[4] != "":
			names = []string{sm[1], sm[4]}
		default:
			names = []string{sm[1]}
		}
		for _, nm := range names {
			id, err := strconv.Atoi(strings.TrimPrefix(nm, prefix))
			if !strings.HasPrefix(nm, prefix) || err != nil || id >= n {
				continue // not this run's
			}
			if markSeen(c.seen, id) {
				c.dups.Add(1)
				continue
			}
			c.named.Add(1)
			c.counted.Add(1)
		}
		c.counted.Add(uint64(extra))
		c.lastAt.Store(time.Now().UnixNano())
	}
	watch := watchRSS(cfg.PID)
	base := uint64(0)
	if cfg.PID > 0 {
		base = deref(procRSS(cfg.PID))
	}
	var wg sync.WaitGroup
	t0 := time.Now()
	clients, failed, err := connectAll(ctx, cfg, n, func(i int) []byte {
		return appendFrame(nil, ws.OpText, []byte(fmt.Sprintf(`{"username":"%s%d"}`, prefix, i)))
	}, func(c *hclient) {
		c.seen = make([]uint64, (n+63)/64)
		c.onText = onText
	}, &wg)
	defer closeClients(clients, &wg)
	if err != nil {
		return Result{}, err
	}
	connected := time.Since(t0)
	// Drained: the sorted counts satisfy the lossless minimum (the k-th
	// most told client was told of at least alive-k joins), and nothing
	// arrived for 500 ms; or nothing arrived for -drain.
	var last int64
	var ok bool
	var counts []int
	for ctx.Err() == nil {
		counts = counts[:0]
		last = t0.UnixNano()
		for _, c := range clients {
			if c != nil && !c.ended.Load() {
				counts = append(counts, int(c.counted.Load()))
				last = max(last, c.lastAt.Load())
			}
		}
		sort.Sort(sort.Reverse(sort.IntSlice(counts)))
		ok = true
		for i, v := range counts {
			if v < len(counts)-i {
				ok = false
				break
			}
		}
		quiet := time.Since(time.Unix(0, last))
		if (ok && quiet > 500*time.Millisecond) || quiet > cfg.Drain {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	drain := time.Unix(0, last).Sub(t0)
	peak := watch.stop()
	var evicted int
	var dups, over, named, told uint64
	for _, c := range clients {
		if c == nil {
			continue
		}
		if c.ended.Load() {
			evicted++
			continue
		}
		dups += c.dups.Load()
		named += c.named.Load()
		told += c.counted.Load()
		if int(c.counted.Load()) > len(counts) {
			over++
		}
	}
	rep.set("clients", fmt.Sprintf("%d  (%d dials failed, all connected in %v)", n, failed, connected.Round(time.Millisecond)))
	rep.set("drain", fmt.Sprintf("%.3fs from first dial to last notice", drain.Seconds()))
	rep.set("server RSS baseline", mb(base))
	rep.set("server RSS peak", mb(peak))
	rep.set("evicted (connection ended)", evicted)
	rep.set("joins told", fmt.Sprintf("%d in all, %d by name, %d in summaries", told, named, told-named))
	rep.set("every later join told", fmt.Sprintf("%v  (sorted counts meet the lossless minimum; %d clients told of more joins than clients, %d names told twice)", ok, over, dups))
	rep.print(cfg)
	return Result{}, nil
}
