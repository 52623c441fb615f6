package main

import (
	"context"
	"time"
)

// runIdle measures what idle connections cost the server: RSS is sampled
// before connecting and again after every client joined and cfg.Hold
// passed; rss_per_conn = (rss_after − rss_before) / connections alive.
func runIdle(ctx context.Context, cfg *Config) (Result, error) {
	res := Result{Scenario: "idle"}
	f := newFleet(cfg, cfg.Conns)
	run := startScenario(cfg, f)
	defer run.close()

	run.open(ctx)
	before := run.before
	if err := f.connectConfirmed(ctx, nil, run.prog, &res); err != nil {
		return res, err
	}

	run.prog.setPhase("hold")
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(cfg.Hold):
	}
	after := run.window(ctx, &res)
	alive, _, _, _ := f.totals()
	res.RSSBeforeBytes = before.RSS
	if before.RSS != nil && after.RSS != nil && alive > 0 {
		res.RSSPerConnBytes = ptr((float64(*after.RSS) - float64(*before.RSS)) / float64(alive))
	}
	res.Receivers = alive
	res.Disconnected, res.DisconnectCodes, res.DisconnectWhy = disconnects(f.clients, nil)
	if cfg.perNode() {
		run.stop()
		idleNodes(f, run, &res)
	}
	return res, nil
}

// idleNodes fills the per-server figures of an idle run over several
// servers: each one's RSS per connection of its own clients.
func idleNodes(f *fleet, run *scenarioRun, res *Result) {
	receivers, gone := f.splitClients(nil, nil, func(*client) {})
	res.Nodes = f.nodeResults(receivers, gone, run.windows, 0)
	finishNodes(res, 0, false, false)
	var before uint64
	var grew int64
	for i := range res.Nodes {
		n := &res.Nodes[i]
		n.RSSBeforeBytes = run.nodes.before[i].latest.RSS
		if n.RSSBeforeBytes != nil && n.Server.RSSBytes != nil {
			before += *n.RSSBeforeBytes
			grew += int64(*n.Server.RSSBytes) - int64(*n.RSSBeforeBytes)
			if n.Receivers > 0 {
				n.RSSPerConnBytes = ptr((float64(*n.Server.RSSBytes) - float64(*n.RSSBeforeBytes)) / float64(n.Receivers))
			}
		}
	}
	res.RSSBeforeBytes, res.RSSPerConnBytes = nil, nil
	if before > 0 && res.Receivers > 0 {
		res.RSSBeforeBytes = ptr(before)
		res.RSSPerConnBytes = ptr(float64(grew) / float64(res.Receivers))
	}
}
