package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// writeJSON prints r as one JSON object (for scripts and CI).
func writeJSON(w io.Writer, r *Result) error {
	if r.DisconnectCodes == nil {
		r.DisconnectCodes = map[string]int{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// writeTable prints r for a person: only the rows the scenario measured,
// then, for a soak, its time series.
func writeTable(w io.Writer, r *Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, a...)...) }

	connectRows(row, r)
	switch r.Scenario {
	case "broadcast", "slow":
		trafficRows(row, r)
	case "storm":
		stormRows(row, r)
	case "idle":
		row("alive after hold", "%d", r.Receivers)
	case "soak":
		soakRows(row, r)
	}
	roomsRows(row, r)
	clientErrorRows(row, r)
	trackRows(row, r)
	serverRows(row, r)
	serverWindowRows(row, r)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Nodes) > 0 {
		fmt.Fprintln(w)
		if err := writeNodes(w, r); err != nil {
			return err
		}
	}
	if len(r.Samples) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	return writeSamples(w, r.Samples)
}

// rowFunc prints one "key<TAB>value" row of the table.
type rowFunc func(k, format string, a ...any)

// connectRows: the ramp-up, its errors and unconfirmed joins.
func connectRows(row rowFunc, r *Result) {
	row("scenario", "%s  %s", r.Scenario, r.URL)
	if r.Shard != nil {
		row("shard", "%d of %d  (run %s; %d sent by this shard's senders)", r.Shard.Index, r.Shard.Of, r.Shard.RunID, r.Shard.Sent)
	}
	if r.Merged > 0 {
		row("merged", "%d shards", r.Merged)
	}
	row("connected", "%d / %d  (%.0f/s over %.2fs, %d failed)", r.Connected, r.Conns, r.ConnectsPerSec, r.ConnectSeconds, r.ConnectFailed)
	for _, k := range sortedKeys(r.ConnectErrors) {
		row("  connect error", "%d × %s", r.ConnectErrors[k], k)
	}
	if r.Unconfirmed > 0 {
		row("joins unconfirmed", "%d  (no barrier message arrived: join not registered?)", r.Unconfirmed)
	}
}

// trafficRows: what broadcast and slow measured.
func trafficRows(row rowFunc, r *Result) {
	row("sent", "%d  (%d senders, %d send errors)", r.Sent, r.Senders, r.SendErrors)
	row("receivers", "%d  (connected for the whole run)", r.Receivers)
	row("deliveries", "%d of %d expected  (%.0f/s over %.2fs)", r.Deliveries, r.Expected, r.DeliveriesPerSec, r.DurationSeconds)
	row("lost", "%d%s", r.Lost, pct(r.Lost, r.Expected))
	if r.OutOfOrder > 0 {
		row("out of order / dup", "%d", r.OutOfOrder)
	}
	if l := r.Latency; l != nil {
		row("latency ms", "p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  (%d samples)", l.P50, l.P90, l.P99, l.Max, l.Count)
	}
}

// trackRows: -track's verdict on silent loss.
func trackRows(row rowFunc, r *Result) {
	t := r.Tracking
	if t == nil {
		return
	}
	row("missed by a whole node", "%d messages  (%d deliveries; of %d messages attempted)", t.MissedByNode, t.LostWithNode, t.Messages)
	row("lost alone", "%d deliveries  (missed by one client while others on its server got them)", t.LostAlone)
	row("server-counted loss", "%.0f messages  (gochat_cluster_* drop/error counters: a node's own, plus the others' publish errors)", t.Counted)
	row("silent loss", "%.0f messages  (missed by a whole node beyond what was counted for it)", t.Silent)
}

// stormRows: the join notices and how long they took.
func stormRows(row rowFunc, r *Result) {
	row("clients", "%d connected at the end", r.Receivers)
	row("notices", "%d received, %d expected at least, %d missing, %d duplicated",
		deref(r.NoticesReceived), deref(r.NoticesExpected), deref(r.NoticesMissing), deref(r.NoticesDup))
	row("drain", "%.3fs from first dial to last notice  (%.0f notices/s)", deref(r.DrainSeconds), r.DeliveriesPerSec)
}

// soakRows: traffic, churn, slow-consumer evictions and replacements.
func soakRows(row rowFunc, r *Result) {
	row("sent", "%d  (%d senders, %d send errors)", r.Sent, r.Senders, r.SendErrors)
	row("deliveries", "%d  (%.0f/s over %.2fs)", r.Deliveries, r.DeliveriesPerSec, r.DurationSeconds)
	row("lost", "%d  (messages owed to healthy clients after their join was confirmed; %d of them connected at the end)", r.Lost, r.Receivers)
	if r.OutOfOrder > 0 {
		row("out of order / dup", "%d", r.OutOfOrder)
	}
	if l := r.Latency; l != nil {
		row("latency ms", "p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  (%d samples, ±3%%)", l.P50, l.P90, l.P99, l.Max, l.Count)
	}
	row("churned", "%d  (closed 1000 and replaced; server echo codes:%s; %d ticks skipped)",
		deref(r.Churned), strings.TrimSuffix(strings.TrimPrefix(codes(r.ChurnCloseCodes), "  (close codes:"), ")"), deref(r.ChurnSkipped))
	row("slow evicted", "%d  (%d slow slots, each refilled)%s; the server counted %s slow-consumer closes",
		deref(r.SlowEvicted), deref(r.SlowClients), codes(r.SlowCodes), optInt(r.ServerSlowConsumers))
	for _, k := range sortedKeys(r.SlowWhy) {
		row("  slow disconnect error", "%d × %s", r.SlowWhy[k], k)
	}
	row("healthy disconnected", "%d  (by the server; replaced)", deref(r.HealthyDisconnected))
	if deref(r.ReplaceFailed) > 0 {
		row("replacement dials failed", "%d", *r.ReplaceFailed)
		for _, k := range sortedKeys(r.ReplaceErrors) {
			row("  replace error", "%d × %s", r.ReplaceErrors[k], k)
		}
	}
}

// clientErrorRows: Error replies, unparsed frames, disconnects and, outside
// the soak, the slow clients.
func clientErrorRows(row rowFunc, r *Result) {
	if r.ServerErrors > 0 {
		row("server Error: replies", "%d  (e.g. rate limit: start the server with a higher -rate/-burst)", r.ServerErrors)
	}
	if r.Unparsed > 0 {
		row("unparsed frames", "%d  (not {\"username\",\"content\"} JSON)", r.Unparsed)
	}
	row("disconnected", "%d%s", r.Disconnected, codes(r.DisconnectCodes))
	if r.Rejoined != nil {
		row("rejoined", "%d  (disconnected clients dialled again; not receivers)", *r.Rejoined)
	}
	for _, k := range sortedKeys(r.DisconnectWhy) {
		row("  disconnect error", "%d × %s", r.DisconnectWhy[k], k)
	}
	if r.SlowClients != nil && r.Scenario != "soak" {
		row("slow clients", "%d, disconnected by the server: %d%s", *r.SlowClients, deref(r.SlowDisconnected), codes(r.SlowCodes))
		for _, k := range sortedKeys(r.SlowWhy) {
			row("  slow disconnect error", "%d × %s", r.SlowWhy[k], k)
		}
		row("slow backlog", "%d messages still readable by the slow clients afterwards", deref(r.SlowBacklog))
	}
}

// serverRows: what the server process used (sampled via /proc or /metrics).
func serverRows(row rowFunc, r *Result) {
	s := r.Server
	if s.RSSBytes != nil {
		row("server rss", "%s", mib(float64(*s.RSSBytes)))
	}
	if r.RSSBeforeBytes != nil {
		row("server rss before", "%s", mib(float64(*r.RSSBeforeBytes)))
	}
	if r.RSSPerConnBytes != nil {
		note := ""
		if *r.RSSPerConnBytes < 0 {
			note = "  (RSS shrank: the server still held memory from an earlier run; restart it for a clean baseline)"
		}
		row("rss per conn", "%.0f bytes%s", *r.RSSPerConnBytes, note)
	}
	if s.CPUSeconds != nil {
		row("server cpu", "%.2fs in the measured window", *s.CPUSeconds)
	}
	if r.CPUUsPerDeliver != nil {
		row("cpu per delivery", "%.2f µs", *r.CPUUsPerDeliver)
	}
	if s.FDs != nil {
		row("server fds", "%d", *s.FDs)
	}
	if s.Goroutines != nil {
		row("server goroutines", "%d", *s.Goroutines)
	}
	if s == (ServerStats{}) {
		row("server", "not observed (no -pid and no reachable -metrics)")
	}
}

// serverWindowRows: the soak's baseline / peak / after comparison.
func serverWindowRows(row rowFunc, r *Result) {
	if r.Baseline == nil {
		return
	}
	row("", "")
	row("server", "baseline\tpeak\tafter  (settled %.1fs, gochat_connections %s)", deref(r.SettleSeconds), optInt(r.ConnectionsAfter))
	b, p, a := r.Baseline, r.Peak, r.After
	optMiB := func(v *uint64) string {
		if v == nil {
			return "-"
		}
		return mib(float64(*v))
	}
	row("  rss", "%s\t%s\t%s", optMiB(b.RSSBytes), optMiB(p.RSSBytes), optMiB(a.RSSBytes))
	row("  goroutines", "%s\t%s\t%s", optInt(b.Goroutines), optInt(p.Goroutines), optInt(a.Goroutines))
	row("  fds", "%s\t%s\t%s", optInt(b.FDs), optInt(p.FDs), optInt(a.FDs))
	row("  cpu seconds", "%s\t%s\t%s", optF(b.CPUSeconds), optF(p.CPUSeconds), optF(a.CPUSeconds))
}

// writeSamples prints the soak's time series, one row per sample.
func writeSamples(w io.Writer, samples []SoakSample) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "elapsed\trss MiB\tgoroutines\tfds\tcpu s\tconnected\tdeliveries/s\tlost\tp99 ms\tchurned\tslow evicted\t")
	for _, x := range samples {
		rss := "-"
		if x.RSSBytes != nil {
			rss = fmt.Sprintf("%.1f", float64(*x.RSSBytes)/(1<<20))
		}
		p99 := "-"
		if x.P99Ms != nil {
			p99 = fmt.Sprintf("%.1f", *x.P99Ms)
		}
		fmt.Fprintf(tw, "%.0fs\t%s\t%s\t%s\t%s\t%d\t%.0f\t%d\t%s\t%d\t%d\t\n", x.ElapsedSeconds, rss, optInt(x.Goroutines), optInt(x.FDs),
			optF(x.CPUSeconds), x.Connected, x.DeliveriesPerSec, x.Lost, p99, x.Churned, x.SlowEvicted)
	}
	return tw.Flush()
}

// writeNodes prints one row per server: what its clients saw, what it used.
func writeNodes(w io.Writer, r *Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	track := r.Tracking != nil
	idle := r.Scenario == "idle"
	head := "node\tclients\tconnected\treceivers\tdelivered\tlost\tdisconnected\tp50 ms\tp99 ms\trss MiB\tcpu s\tµs/delivery\t"
	if idle {
		head = "node\tclients\tconnected\talive\tdisconnected\trss MiB\trss/conn B\tfds\t"
	}
	rejoin := r.Rejoined != nil
	if rejoin {
		head += "rejoined\tits deliveries\t"
	}
	if track {
		head += "missed by node\tmissed partly\t"
	}
	fmt.Fprintln(tw, head+"restarts\tcluster counters\t")
	for i, n := range r.Nodes {
		rss := "-"
		if n.Server.RSSBytes != nil {
			rss = fmt.Sprintf("%.1f", float64(*n.Server.RSSBytes)/(1<<20))
		}
		if idle {
			perConn := "-"
			if n.RSSPerConnBytes != nil {
				perConn = fmt.Sprintf("%.0f", *n.RSSPerConnBytes)
			}
			fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t", i, n.Clients, n.Connected, n.Receivers, n.Disconnected, rss, perConn, optInt(n.Server.FDs))
		} else {
			p50, p99 := "-", "-"
			if n.Latency != nil {
				p50, p99 = fmt.Sprintf("%.1f", n.Latency.P50), fmt.Sprintf("%.1f", n.Latency.P99)
			}
			fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t", i, n.Clients, n.Connected, n.Receivers, n.Deliveries, n.Lost,
				n.Disconnected, p50, p99, rss, optF(n.Server.CPUSeconds), optF(n.CPUUsPerDeliver))
		}
		if rejoin {
			fmt.Fprintf(tw, "%d\t%d\t", n.Rejoined, n.RejoinedDeliveries)
		}
		if track {
			fmt.Fprintf(tw, "%s\t%s\t", optInt(n.MissedWhole), optInt(n.MissedPartly))
		}
		var ctr []string
		for _, k := range sortedKeys(n.Counters) {
			ctr = append(ctr, fmt.Sprintf("%s=%.0f", strings.TrimSuffix(strings.TrimPrefix(k, "gochat_cluster_"), "_total"), n.Counters[k]))
		}
		fmt.Fprintf(tw, "%d\t%s\t\n", n.Restarts, strings.Join(ctr, " "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for i, n := range r.Nodes {
		fmt.Fprintf(w, "node %d: %s\n", i, n.URL)
	}
	return nil
}

func optInt(p *int) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprint(*p)
}

func optF(p *float64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f", *p)
}

func pct(n int64, of uint64) string {
	if of == 0 {
		return ""
	}
	return fmt.Sprintf("  (%.3f%%)", 100*float64(n)/float64(of))
}

func codes(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("  (close codes:")
	for _, k := range sortedKeys(m) {
		fmt.Fprintf(&b, " %s×%d", k, m[k])
	}
	b.WriteString(")")
	return b.String()
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
