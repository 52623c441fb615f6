package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// mergeMain is 'bench merge [-json] shard.json...': it adds up the shards
// of one broadcast run (-shard i/k, each one's -json) into the report of
// the whole run. Counts are summed, latency percentiles come from the sum
// of the shards' HDR histograms (never from averaged percentiles), and the
// servers' own figures are shard 0's (every shard sampled the same servers).
func mergeMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench merge", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print one JSON object instead of the table")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: bench merge [-json] shard0.json shard1.json ...\n\n"+
			"Combines the -json results of every shard of one 'bench broadcast -shard i/k -sync DIR' run\n"+
			"(given one result of a run that was not sharded, prints it as a table).\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	var parts []Result
	for _, path := range fs.Args() {
		b, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(stderr, "bench merge:", err)
			return 1
		}
		var r Result
		if err := json.Unmarshal(b, &r); err != nil {
			fmt.Fprintf(stderr, "bench merge: %s: %v\n", path, err)
			return 1
		}
		parts = append(parts, r)
	}
	res, err := mergeResults(parts)
	if err != nil {
		fmt.Fprintln(stderr, "bench merge:", err)
		return 1
	}
	if *asJSON {
		writeJSON(stdout, &res)
	} else {
		writeTable(stdout, &res)
	}
	if err := res.connectErr(); err != nil {
		fmt.Fprintln(stderr, "bench merge:", err)
		return 1
	}
	return 0
}

// mergeResults combines the shards of one run; it refuses results that
// are not every shard of one run exactly once. One result of a run that
// was not sharded comes back as it is (merge then only prints it).
func mergeResults(parts []Result) (Result, error) {
	if len(parts) == 0 {
		return Result{}, errors.New("nothing to merge")
	}
	if len(parts) == 1 && parts[0].Shard == nil {
		return parts[0], nil // one process's result: printed as it is
	}
	parts = slices.Clone(parts)
	for i, p := range parts {
		if p.Shard == nil {
			return Result{}, fmt.Errorf("result %d is not a shard (run with -shard i/k -json)", i+1)
		}
	}
	slices.SortFunc(parts, func(a, b Result) int { return a.Shard.Index - b.Shard.Index })
	first := parts[0]
	for i, p := range parts {
		switch {
		case p.Shard.RunID != first.Shard.RunID:
			return Result{}, fmt.Errorf("shard %d is of run %s, shard %d of run %s", p.Shard.Index, p.Shard.RunID, first.Shard.Index, first.Shard.RunID)
		case p.Shard.Of != len(parts):
			return Result{}, fmt.Errorf("the run has %d shards, %d given", p.Shard.Of, len(parts))
		case p.Shard.Index != i:
			return Result{}, fmt.Errorf("shard %d/%d missing (or given twice)", i, len(parts))
		case p.Scenario != first.Scenario || p.URL != first.URL || len(p.Nodes) != len(first.Nodes):
			return Result{}, fmt.Errorf("shard %d ran %s against %s, shard 0 %s against %s", i, p.Scenario, p.URL, first.Scenario, first.URL)
		case p.Sent != first.Sent:
			return Result{}, fmt.Errorf("shard %d counted %d sent in all, shard 0 %d", i, p.Sent, first.Sent)
		case (p.Tracking == nil) != (first.Tracking == nil):
			return Result{}, errors.New("some shards ran with -track, some without")
		}
	}

	out := Result{Scenario: first.Scenario, URL: first.URL, Sent: first.Sent, Merged: len(parts),
		DisconnectCodes: map[string]int{}}
	for _, p := range parts {
		out.Conns += p.Conns
		out.Connected += p.Connected
		out.ConnectFailed += p.ConnectFailed
		out.ConnectErrors = addCounts(out.ConnectErrors, p.ConnectErrors)
		if out.ConnectFirst == "" {
			out.ConnectFirst = p.ConnectFirst
		}
		out.ConnectSeconds = max(out.ConnectSeconds, p.ConnectSeconds)
		out.Unconfirmed += p.Unconfirmed
		out.Senders += p.Senders
		out.SendErrors += p.SendErrors
		out.Receivers += p.Receivers
		out.Deliveries += p.Deliveries
		out.Expected += p.Expected
		out.Lost += p.Lost
		out.OutOfOrder += p.OutOfOrder
		out.ServerErrors += p.ServerErrors
		out.Unparsed += p.Unparsed
		out.DurationSeconds = max(out.DurationSeconds, p.DurationSeconds)
		out.Disconnected += p.Disconnected
		if p.Rejoined != nil {
			out.Rejoined = ptr(deref(out.Rejoined) + *p.Rejoined)
		}
		out.DisconnectCodes = addCounts(out.DisconnectCodes, p.DisconnectCodes)
		out.DisconnectWhy = addCounts(out.DisconnectWhy, p.DisconnectWhy)
	}
	if out.ConnectSeconds > 0 {
		out.ConnectsPerSec = float64(out.Connected) / out.ConnectSeconds
	}
	if out.DurationSeconds > 0 {
		out.DeliveriesPerSec = float64(out.Deliveries) / out.DurationSeconds
	}

	var all *hdrhistogram.Histogram
	out.Nodes = make([]NodeResult, len(first.Nodes))
	for i := range out.Nodes {
		n := &out.Nodes[i]
		f := first.Nodes[i]
		n.URL, n.Server, n.Counters, n.Restarts = f.URL, f.Server, f.Counters, f.Restarts
		n.RSSBeforeBytes = f.RSSBeforeBytes
		var h *hdrhistogram.Histogram
		for _, p := range parts {
			x := p.Nodes[i]
			if x.URL != n.URL {
				return Result{}, fmt.Errorf("shard %d's server %d is %s, shard 0's %s", p.Shard.Index, i, x.URL, n.URL)
			}
			n.Clients += x.Clients
			n.Connected += x.Connected
			n.ConnectFailed += x.ConnectFailed
			n.Senders += x.Senders
			n.Receivers += x.Receivers
			n.Deliveries += x.Deliveries
			n.Expected += x.Expected
			n.Lost += x.Lost
			n.OutOfOrder += x.OutOfOrder
			n.Disconnected += x.Disconnected
			n.Rejoined += x.Rejoined
			n.RejoinedDeliveries += x.RejoinedDeliveries
			n.Missing = addCounts(n.Missing, x.Missing)
			if x.LatencyHist == "" {
				if x.Latency != nil {
					return Result{}, fmt.Errorf("shard %d's server %d has latencies but no latency_hist", p.Shard.Index, i)
				}
				continue
			}
			xh, err := decodeHist(x.LatencyHist)
			if err != nil {
				return Result{}, fmt.Errorf("shard %d's server %d latency_hist: %w", p.Shard.Index, i, err)
			}
			if h == nil {
				h = hdrhistogram.New(1, histMax, histSigFigs)
			}
			h.Merge(xh)
		}
		n.Latency = latencyOf(h)
		if h != nil {
			if all == nil {
				all = hdrhistogram.New(1, histMax, histSigFigs)
			}
			all.Merge(h)
		}
		if n.Server.CPUSeconds != nil && n.Deliveries > 0 {
			n.CPUUsPerDeliver = ptr(*n.Server.CPUSeconds * 1e6 / float64(n.Deliveries))
		}
	}
	out.Latency = latencyOf(all)
	messages := 0
	if first.Tracking != nil {
		messages = first.Tracking.Messages
	}
	finishNodes(&out, messages, first.Tracking != nil, false)
	if out.Server.CPUSeconds != nil && out.Deliveries > 0 {
		out.CPUUsPerDeliver = ptr(*out.Server.CPUSeconds * 1e6 / float64(out.Deliveries))
	}
	return out, nil
}

// addCounts adds b's counts into a (allocated when needed) and returns it.
func addCounts(a, b map[string]int) map[string]int {
	if len(b) == 0 {
		return a
	}
	if a == nil {
		a = map[string]int{}
	}
	for k, v := range b {
		a[k] += v
	}
	return a
}
