// Command plot turns the runs of bench/compare.sh into compare.json, a
// Markdown table for the README and SVG plots (gonum/plot). It also judges
// every run: a run whose bench exited non-zero, that connected fewer
// clients than requested or that saw protocol errors did not measure what
// it claims, is marked failed in the output and makes plot exit 1.
//
//	plot -runs runs.tsv -out DIR [-quick] [-note TEXT]
//
// runs.tsv has one line per run: server, scenario, x (connections for
// idle, offered deliveries/s for broadcast, connections otherwise), the
// bench JSON file, the bench exit status and a failure noted by the script
// (or "-").
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// servers in table order, with the column heading.
var servers = []struct{ id, title string }{
	{"gochat", "gochat"},
	{"gorilla", "goroutine-per-conn (gorilla)"},
	{"gws", "lxzan/gws"},
	{"nbio", "lesismal/nbio"},
}

// bench is the part of the harness's JSON the comparison reads.
type bench struct {
	Scenario     string  `json:"scenario"`
	Conns        int     `json:"conns"`
	Connected    int     `json:"connected"`
	Failed       int     `json:"connect_failed"`
	Unconfirmed  int     `json:"joins_unconfirmed"`
	Sent         uint64  `json:"sent"`
	Deliveries   uint64  `json:"deliveries"`
	Expected     uint64  `json:"deliveries_expected"`
	Lost         int64   `json:"lost"`
	OutOfOrder   uint64  `json:"out_of_order"`
	ServerErrors uint64  `json:"server_errors"`
	Unparsed     uint64  `json:"unparsed_frames"`
	Disconnected int     `json:"disconnected"`
	DPS          float64 `json:"deliveries_per_sec"`
	Latency      *struct {
		P50, P90, P99, Max float64
	} `json:"latency_ms"`
	RSSPerConn       *float64 `json:"rss_per_conn_bytes"`
	CPUPerDelivery   *float64 `json:"cpu_us_per_delivery"`
	Drain            *float64 `json:"drain_seconds"`
	NoticesMissing   *uint64  `json:"notices_missing"`
	SlowClients      *int     `json:"slow_clients"`
	SlowDisconnected *int     `json:"slow_disconnected"`
	Server           struct {
		RSS *uint64 `json:"rss_bytes"`
		FDs *int    `json:"fds"`
	} `json:"server"`
}

// Run is one line of compare.json.
type Run struct {
	Server   string          `json:"server"`
	Scenario string          `json:"scenario"`
	X        float64         `json:"x"` // conns (idle, storm, slow) or offered deliveries/s (broadcast)
	OK       bool            `json:"ok"`
	Failure  string          `json:"failure,omitempty"`
	Exit     int             `json:"bench_exit"`
	Result   json.RawMessage `json:"result,omitempty"`
	b        *bench
}

type output struct {
	Generated string `json:"generated"`
	Quick     bool   `json:"quick"`
	Note      string `json:"note,omitempty"`
	Machine   struct {
		CPUs   int    `json:"cpus"`
		Kernel string `json:"kernel,omitempty"`
		Go     string `json:"go"`
	} `json:"machine"`
	Runs []*Run `json:"runs"`
}

func main() {
	runsFile := flag.String("runs", "", "runs.tsv written by bench/compare.sh")
	out := flag.String("out", ".", "directory for compare.json, compare.md and the SVGs")
	quick := flag.Bool("quick", false, "the runs were a -quick smoke run")
	note := flag.String("note", "", "a note stored in compare.json and printed under the table")
	flag.Parse()
	if *runsFile == "" {
		flag.Usage()
		os.Exit(2)
	}
	runs, err := readRuns(*runsFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(2)
	}
	o := output{Generated: time.Now().UTC().Format(time.RFC3339), Quick: *quick, Note: *note, Runs: runs}
	o.Machine.CPUs = runtime.NumCPU()
	o.Machine.Go = runtime.Version()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		o.Machine.Kernel = strings.TrimSpace(string(b))
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(2)
	}
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(*out, name), data, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "plot:", err)
			os.Exit(2)
		}
	}
	j, _ := json.MarshalIndent(o, "", "  ")
	write("compare.json", append(j, '\n'))
	md := table(runs, *quick, *note)
	write("compare.md", []byte(md))
	fmt.Print(md)
	for _, p := range plots(runs) {
		if err := p.plot.Save(7*vg.Inch, 4.5*vg.Inch, filepath.Join(*out, p.file)); err != nil {
			fmt.Fprintln(os.Stderr, "plot:", err)
			os.Exit(2)
		}
	}
	failed := 0
	for _, r := range runs {
		if !r.OK {
			failed++
			fmt.Fprintf(os.Stderr, "FAILED: %s %s %g: %s\n", r.Server, r.Scenario, r.X, r.Failure)
		}
	}
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "plot: %d of %d runs did not measure what they claim\n", failed, len(runs))
		os.Exit(1)
	}
}

func readRuns(file string) ([]*Run, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var runs []*Run
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fld := strings.Split(sc.Text(), "\t")
		if len(fld) != 6 {
			return nil, fmt.Errorf("%s: bad line %q", file, sc.Text())
		}
		x, _ := strconv.ParseFloat(fld[2], 64)
		exit, _ := strconv.Atoi(fld[4])
		r := &Run{Server: fld[0], Scenario: fld[1], X: x, Exit: exit}
		if fld[5] != "-" {
			r.Failure = fld[5]
		}
		raw, err := os.ReadFile(fld[3])
		var b bench
		switch {
		case err != nil:
			r.Failure = join(r.Failure, "no result: "+err.Error())
		case json.Unmarshal(raw, &b) != nil:
			r.Failure = join(r.Failure, "bench printed no JSON result")
		default:
			r.Result, r.b = json.RawMessage(raw), &b
		}
		judge(r)
		runs = append(runs, r)
	}
	return runs, sc.Err()
}

// judge decides whether a run measured what it claims.
func judge(r *Run) {
	if b := r.b; b != nil {
		if r.Exit != 0 {
			r.Failure = join(r.Failure, fmt.Sprintf("bench exited %d", r.Exit))
		}
		if b.Connected != b.Conns || b.Failed > 0 {
			r.Failure = join(r.Failure, fmt.Sprintf("connected %d of %d clients (%d refused or failed)", b.Connected, b.Conns, b.Failed))
		}
		if b.Unparsed > 0 || b.OutOfOrder > 0 || b.ServerErrors > 0 {
			r.Failure = join(r.Failure, fmt.Sprintf("protocol errors: %d unparsed frames, %d out of order, %d Error: replies",
				b.Unparsed, b.OutOfOrder, b.ServerErrors))
		}
	}
	r.OK = r.Failure == ""
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// find returns the runs of one scenario, keyed by server, sorted by x.
func find(runs []*Run, scenario string) (xs []float64, at map[string]map[float64]*Run) {
	at = map[string]map[float64]*Run{}
	for _, r := range runs {
		if r.Scenario != scenario {
			continue
		}
		if at[r.Server] == nil {
			at[r.Server] = map[float64]*Run{}
		}
		at[r.Server][r.X] = r
		if !slices.Contains(xs, r.X) {
			xs = append(xs, r.X)
		}
	}
	slices.Sort(xs)
	return xs, at
}

func table(runs []*Run, quick bool, note string) string {
	var b strings.Builder
	b.WriteString("<!-- compare:begin (generated by bench/compare.sh; do not edit by hand) -->\n")
	b.WriteString("| |")
	for _, s := range servers {
		b.WriteString(" " + s.title + " |")
	}
	b.WriteString("\n|---|")
	for range servers {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	row := func(label string, r map[string]map[float64]*Run, x float64, cell func(*bench) string) {
		b.WriteString("| " + label + " |")
		for _, s := range servers {
			run := r[s.id][x]
			switch {
			case run == nil:
				b.WriteString(" — |")
			case !run.OK:
				b.WriteString(" FAILED: " + run.Failure + " |")
			default:
				b.WriteString(" " + cell(run.b) + " |")
			}
		}
		b.WriteString("\n")
	}
	xs, at := find(runs, "idle")
	for _, x := range xs {
		row(fmt.Sprintf("RSS per idle joined connection, %s clients", count(x)), at, x, func(r *bench) string {
			if r.RSSPerConn == nil {
				return "n/a"
			}
			return bytesText(*r.RSSPerConn)
		})
	}
	xs, at = find(runs, "broadcast")
	for _, x := range xs {
		row(fmt.Sprintf("broadcast, 2,000 clients, %s deliveries/s offered: p99 / CPU per delivery", kilo(x)), at, x, func(r *bench) string {
			s := "n/a"
			if r.Latency != nil {
				s = msText(r.Latency.P99)
			}
			if r.CPUPerDelivery != nil {
				s += fmt.Sprintf(" / %.2f µs", *r.CPUPerDelivery)
			}
			return s + lossText(r)
		})
	}
	xs, at = find(runs, "storm")
	for _, x := range xs {
		row(fmt.Sprintf("join storm, %s clients with notices on: drained in", count(x)), at, x, func(r *bench) string {
			s := "n/a"
			if r.Drain != nil {
				s = fmt.Sprintf("%.2f s", *r.Drain)
			}
			var extra []string
			if r.Disconnected > 0 {
				extra = append(extra, fmt.Sprintf("%s evicted", pct(float64(r.Disconnected), float64(r.Conns))))
			}
			if r.NoticesMissing != nil && *r.NoticesMissing > 0 {
				extra = append(extra, fmt.Sprintf("%d notices missing", *r.NoticesMissing))
			}
			if len(extra) == 0 {
				extra = append(extra, "nobody evicted")
			}
			return s + ", " + strings.Join(extra, ", ")
		})
	}
	xs, at = find(runs, "slow")
	for _, x := range xs {
		row(fmt.Sprintf("slow consumers (%s clients, some never read): healthy lost / slow clients closed", count(x)), at, x, func(r *bench) string {
			s := fmt.Sprintf("%d lost", r.Lost)
			if r.SlowClients != nil && r.SlowDisconnected != nil {
				s += fmt.Sprintf(" / %d of %d closed", *r.SlowDisconnected, *r.SlowClients)
			}
			if r.Disconnected > 0 {
				s += fmt.Sprintf(", %d healthy disconnected", r.Disconnected)
			}
			return s
		})
	}
	mode := "full run"
	if quick {
		mode = "-quick run (shorter, fewer points)"
	}
	fmt.Fprintf(&b, "\n%s; server and load generator share %d CPUs over loopback. Lost = deliveries owed to the clients still connected that had not arrived when the harness stopped waiting (5 s after the last send): a saturated server's backlog counts as lost; evicted clients are not receivers.", mode, runtime.NumCPU())
	if note != "" {
		b.WriteString(" " + note)
	}
	b.WriteString("\n<!-- compare:end -->\n")
	return b.String()
}

func lossText(r *bench) string {
	var parts []string
	if r.Lost > 0 {
		parts = append(parts, pct(float64(r.Lost), float64(r.Expected))+" lost")
	}
	if r.Disconnected > 0 {
		parts = append(parts, fmt.Sprintf("%d clients evicted", r.Disconnected))
	}
	if len(parts) == 0 {
		return ", 0 lost"
	}
	return ", " + strings.Join(parts, ", ")
}

func pct(n, of float64) string {
	if of == 0 {
		return fmt.Sprint(n)
	}
	return fmt.Sprintf("%.3g%%", 100*n/of)
}

func count(x float64) string {
	s := strconv.Itoa(int(x))
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func kilo(x float64) string { return fmt.Sprintf("%gk", math.Round(x/1000)) }

func bytesText(v float64) string {
	if v >= 10240 {
		return fmt.Sprintf("%.1f KB", v/1024)
	}
	return fmt.Sprintf("%.0f B", v)
}

func msText(ms float64) string {
	if ms >= 1000 {
		return fmt.Sprintf("%.2f s", ms/1000)
	}
	return fmt.Sprintf("%.0f ms", ms)
}

type namedPlot struct {
	file string
	plot *plot.Plot
}

func plots(runs []*Run) []namedPlot {
	mk := func(title, x, y string, logY bool) *plot.Plot {
		p := plot.New()
		p.Title.Text, p.X.Label.Text, p.Y.Label.Text = title, x, y
		p.Legend.Top, p.Legend.Left = true, true
		p.X.Tick.Marker = plainTicks{}
		p.Add(plotter.NewGrid())
		if logY {
			p.Y.Scale = plot.LogScale{}
			p.Y.Tick.Marker = logTicks{}
		}
		return p
	}
	// A log axis without data panics when drawn: fall back to linear.
	linearIfEmpty := func(p *plot.Plot, has bool) {
		if !has {
			p.Y.Scale = plot.LinearScale{}
			p.Y.Tick.Marker = plot.DefaultTicks{}
		}
	}
	series := func(p *plot.Plot, scenario string, xscale float64, y func(*bench) (float64, bool)) bool {
		_, at := find(runs, scenario)
		var args []any
		for _, s := range servers {
			var pts plotter.XYs
			for x, r := range at[s.id] {
				if !r.OK {
					continue
				}
				if v, ok := y(r.b); ok && v > 0 {
					pts = append(pts, plotter.XY{X: x / xscale, Y: v})
				}
			}
			slices.SortFunc(pts, func(a, b plotter.XY) int { return int(math.Copysign(1, a.X-b.X)) })
			if len(pts) > 0 {
				args = append(args, s.title, pts)
			}
		}
		if len(args) > 0 {
			plotutil.AddLinePoints(p, args...)
		}
		return len(args) > 0
	}
	lat := mk("Broadcast to 2,000 clients: p99 latency", "offered deliveries/s (thousands)", "p99 latency (ms, log)", true)
	linearIfEmpty(lat, series(lat, "broadcast", 1000, func(b *bench) (float64, bool) {
		if b.Latency == nil {
			return 0, false
		}
		return b.Latency.P99, true
	}))
	cpu := mk("Broadcast to 2,000 clients: server CPU per delivery", "offered deliveries/s (thousands)", "server CPU per delivery (µs)", false)
	series(cpu, "broadcast", 1000, func(b *bench) (float64, bool) {
		if b.CPUPerDelivery == nil {
			return 0, false
		}
		return *b.CPUPerDelivery, true
	})
	rss := mk("Idle joined connections: server RSS per connection", "connections", "RSS per connection (bytes, log)", true)
	linearIfEmpty(rss, series(rss, "idle", 1, func(b *bench) (float64, bool) {
		if b.RSSPerConn == nil {
			return 0, false
		}
		return *b.RSSPerConn, true
	}))
	// The legend goes top right, above the lines: leave it room.
	rss.Legend.Left = false
	rss.Y.Max *= 4
	lat.Y.Max *= 4
	cpu.Legend.Left = false
	cpu.Y.Min, cpu.Y.Max = 0, cpu.Y.Max*1.5
	return []namedPlot{{"compare-latency.svg", lat}, {"compare-cpu.svg", cpu}, {"compare-rss.svg", rss}}
}

// logTicks labels 1, 2 and 5 times each power of ten, so that a log axis
// spanning less than a decade still has labels (plot.LogTicks labels only
// the powers of ten).
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for e := math.Floor(math.Log10(lo)); math.Pow(10, e) <= hi; e++ {
		d := math.Pow(10, e)
		for m := 1; m < 10; m++ {
			v := float64(m) * d
			if v < lo || v > hi {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 || m == 2 || m == 5 {
				t.Label = strconv.FormatFloat(v, 'f', -1, 64)
			}
			ts = append(ts, t)
		}
	}
	return ts
}

// plainTicks are gonum's default ticks labelled without trailing zeros.
type plainTicks struct{}

func (plainTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = strconv.FormatFloat(ts[i].Value, 'f', -1, 64)
		}
	}
	return ts
}
