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
	return res, nil
}
