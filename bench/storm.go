package main

import (
	"context"
	"time"
)

// stormQuiet is how long the notice count must stay still, once the
// minimum expected count is reached, before the storm is considered over.
const stormQuiet = 300 * time.Millisecond

// runStorm connects and joins all clients as fast as cfg allows with join
// notices on, and measures how long until every client has every notice it
// should get.
//
// Which notices a client should get depends on the server's registration
// order, which the bench cannot see. What it can check exactly: for every
// pair of clients that stayed connected, the one that registered first must
// have received the other's join notice — so at least one of the two saw
// the other's — and every client saw its own. That yields
// notices_expected = N(N+1)/2 as the lossless minimum and notices_missing
// as the number of pairs (and own notices) that break the rule.
// drain_seconds runs from the first dial to the last notice received.
func runStorm(ctx context.Context, cfg *Config) (Result, error) {
	res := Result{Scenario: "storm"}
	c2 := *cfg
	c2.storm = true
	cfg = &c2
	f := newFleet(cfg, cfg.Conns)
	run := startScenario(cfg, f)
	defer run.close()

	run.open(ctx)
	start := f.now()
	err := f.connect(ctx, nil)
	res.fillConnect(f)
	if err != nil {
		return res, err
	}
	run.prog.setPhase("notices")
	var alive []*client
	var total, last uint64
	lastChange := time.Now()
	for ctx.Err() == nil {
		alive = alive[:0]
		total = 0
		for _, c := range f.clients {
			if f.alive(c) {
				alive = append(alive, c)
				total += c.notices.Load()
			}
		}
		n := uint64(len(alive))
		if total != last {
			last, lastChange = total, time.Now()
		}
		quiet := time.Since(lastChange)
		if (total >= n*(n+1)/2 && quiet >= stormQuiet) || quiet >= cfg.Drain {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	run.window(ctx, &res)
	run.stop()
	if err := ctx.Err(); err != nil {
		return res, err
	}

	n := uint64(len(alive))
	var missing, dups uint64
	end := start
	total = 0
	for i, a := range alive {
		total += a.notices.Load()
		dups += a.dupNotices
		res.ServerErrors += a.serverErrors
		res.Unparsed += a.unparsed
		end = max(end, a.lastNoticeAt)
		if !a.saw(a.id) {
			missing++
		}
		for _, b := range alive[i+1:] {
			if !a.saw(b.id) && !b.saw(a.id) {
				missing++
			}
		}
	}
	res.Receivers = len(alive)
	// In the common keys a notice is a delivery and a missing pair a loss.
	res.Deliveries, res.Expected, res.Lost = total, n*(n+1)/2, int64(missing)
	res.NoticesReceived = ptr(total)
	res.NoticesExpected = ptr(n * (n + 1) / 2)
	res.NoticesMissing = ptr(missing)
	res.NoticesDup = ptr(dups)
	res.DrainSeconds = ptr(float64(end-start) / 1e9)
	res.DurationSeconds = *res.DrainSeconds
	if *res.DrainSeconds > 0 {
		res.DeliveriesPerSec = float64(total) / *res.DrainSeconds
	}
	if res.Server.CPUSeconds != nil && total > 0 {
		res.CPUUsPerDeliver = ptr(*res.Server.CPUSeconds * 1e6 / float64(total))
	}
	res.Disconnected, res.DisconnectCodes, res.DisconnectWhy = disconnects(f.clients, nil)
	return res, nil
}

// saw reports whether c received the join notice of client id.
func (c *client) saw(id int) bool { return c.seen[id/64]&(1<<(id%64)) != 0 }
