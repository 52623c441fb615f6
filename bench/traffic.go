package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"time"
)

// runBroadcast connects cfg.Conns clients, lets cfg.Senders of them send
// cfg.Rate messages per second each for cfg.Duration, waits up to cfg.Drain
// for the deliveries still in flight, and accounts for every message:
// lost = sent × receivers − deliveries, receivers being the clients still
// connected at the end.
func runBroadcast(ctx context.Context, cfg *Config) (Result, error) {
	return runTraffic(ctx, cfg, "broadcast", 0)
}

// runSlow is runBroadcast with the last cfg.Slow clients joining and then
// never reading. It reports how many of them the server disconnected and
// whether the healthy receivers still got every message.
func runSlow(ctx context.Context, cfg *Config) (Result, error) {
	if cfg.Slow <= 0 {
		return Result{}, errors.New("-slow must be > 0")
	}
	return runTraffic(ctx, cfg, "slow", cfg.Slow)
}

// checkTraffic validates the flags shared by the scenarios that send:
// slow clients never read, so they cannot be senders.
func checkTraffic(cfg *Config, slow int) error {
	switch {
	case cfg.Senders <= 0 || cfg.Rate <= 0:
		return errors.New("-senders and -rate must be > 0")
	case cfg.Senders+slow > cfg.Conns:
		return fmt.Errorf("-senders (%d) + slow clients (%d) exceed -conns (%d)", cfg.Senders, slow, cfg.Conns)
	case cfg.Size < minContent:
		return fmt.Errorf("-size must be at least %d bytes (the latency header)", minContent)
	}
	return nil
}

func runTraffic(ctx context.Context, cfg *Config, scenario string, slow int) (res Result, err error) {
	res = Result{Scenario: scenario, Senders: cfg.Senders}
	if err := checkTraffic(cfg, slow); err != nil {
		return res, err
	}
	sync := newShardSync(cfg)
	if sync != nil {
		defer func() {
			if err != nil {
				sync.abort(err)
			}
		}()
		p, err := sync.plan(ctx, cfg)
		if err != nil {
			return res, err
		}
		cfg.runID, cfg.clockEpoch = p.RunID, p.Epoch
	}
	if cfg.Shards > 1 {
		res.Shard = &ShardInfo{Index: cfg.Shard, Of: cfg.Shards, RunID: cfg.runID}
	}
	lo, hi := cfg.shardRange()
	f := newFleetRange(cfg, lo, hi)
	if cfg.Track {
		if f.track, err = newTracker(cfg, f.n); err != nil {
			return res, err
		}
	}
	f.senders = cfg.Senders
	isSlow := func(id int) bool { return id >= cfg.Conns-slow }
	run := startScenario(cfg, f)
	run.sync = sync
	defer run.close()

	start, err := run.startSending(ctx, isSlow, &res)
	if err != nil {
		return res, err
	}
	var rejoin *rejoiner
	if cfg.Rejoin {
		rejoin = startRejoin(ctx, f)
		// Before run.close (defers run last first): no dial after the
		// close, and every client back is closed with the others.
		defer func() { f.rejoined = rejoin.stop() }()
	}
	sendErrs := f.sendAll(ctx, cfg)
	if err := run.startDraining(ctx, &res); err != nil {
		return res, err
	}
	// Receivers, their deliveries and the disconnected clients are judged
	// in one pass, so a client is either a receiver for the whole measured
	// window or a disconnect, never both.
	// A repeated or late message does not count towards the end of the
	// wait: the drain ends when every receiver could have every message.
	var receivers, gone []*client
	deadline := time.Now().Add(cfg.Drain)
	for {
		var del, fresh uint64
		receivers, gone = f.splitClients(receivers, gone, func(c *client) {
			d := c.deliveries.Load()
			del += d
			fresh += d - min(c.repeats.Load(), d)
		})
		res.Receivers, res.Deliveries = len(receivers), del
		res.Expected = res.Sent * uint64(len(receivers))
		if fresh >= res.Expected || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if rejoin != nil {
		f.rejoined = rejoin.stop()
		res.Rejoined = ptr(len(f.rejoined))
	}
	run.window(ctx, &res)
	if slow > 0 {
		run.prog.setPhase("probe slow")
		probeSlow(f, cfg.Drain)
	}
	run.stop()

	res.SendErrors = sendErrs
	res.Lost = int64(res.Expected) - int64(res.Deliveries)
	res.Disconnected, res.DisconnectCodes, res.DisconnectWhy = disconnects(gone, nil)
	res.Senders = f.activeSenders
	end := start
	for _, c := range receivers {
		res.OutOfOrder += c.outOfOrder
		end = max(end, c.lastDelivery)
	}
	for _, c := range f.clients { // errors go to the offending sender only
		res.ServerErrors += c.serverErrors
		res.Unparsed += c.unparsed
	}
	res.DurationSeconds = float64(end-start) / 1e9
	if res.DurationSeconds > 0 {
		res.DeliveriesPerSec = float64(res.Deliveries) / res.DurationSeconds
	}
	res.Latency = mergeLatency(receivers)
	if cfg.perNode() {
		res.Nodes = f.nodeResults(receivers, gone, run.windows, res.Sent)
		finishNodes(&res, attempted(f.lastSeq), f.track != nil, cfg.Shards > 1)
	}
	if res.Server.CPUSeconds != nil && res.Deliveries > 0 {
		res.CPUUsPerDeliver = ptr(*res.Server.CPUSeconds * 1e6 / float64(res.Deliveries))
	}
	if slow > 0 {
		res.SlowClients = ptr(slow)
		n, codes, why := disconnects(f.clients, func(c *client) bool { return c.slow })
		var backlog uint64
		for _, c := range f.clients {
			if c.slow {
				backlog += c.deliveries.Load()
			}
		}
		res.SlowDisconnected, res.SlowCodes, res.SlowWhy, res.SlowBacklog = &n, codes, why, &backlog
	}
	return res, nil
}

// attempted is how many measured messages the senders attempted.
func attempted(lastSeq []int) int {
	n := 0
	for _, q := range lastSeq {
		n += q
	}
	return n
}

// localLastSeq is, per sender id, the highest sequence this process's
// senders attempted (read after sendAll returned).
func (f *fleet) localLastSeq() []int {
	out := make([]int, f.senders)
	for _, c := range f.clients {
		if c.id < len(out) {
			out[c.id] = c.attempted
		}
	}
	return out
}

// sendAll runs one goroutine per sender (clients 0..Senders-1), each sending
// at cfg.Rate on its own schedule, phases spread evenly so the server sees
// a steady stream rather than bursts. It returns the number of failed writes.
func (f *fleet) sendAll(ctx context.Context, cfg *Config) uint64 {
	interval := time.Duration(float64(time.Second) / cfg.Rate)
	start := time.Now()
	end := start.Add(cfg.Duration)
	var wg sync.WaitGroup
	errs := make([]uint64, cfg.Senders)
	for _, c := range f.clients {
		i := c.id // the senders are clients 0..Senders-1, in whichever shard
		if i >= cfg.Senders || !f.alive(c) {
			continue
		}
		f.activeSenders++
		c.sending = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			first := start.Add(interval * time.Duration(i) / time.Duration(cfg.Senders))
			f.sendPaced(ctx, c, first, end, interval, math.MaxInt, func(err error) bool {
				errs[i]++
				// soak: a half-written frame would leave a gap in
				// the sequence that no receiver could be blamed for.
				return !isTimeout(err) || f.soak != nil
			})
		}()
	}
	wg.Wait()
	var n uint64
	for _, e := range errs {
		n += e
	}
	return n
}

func (f *fleet) sentTotal() uint64 {
	var n uint64
	for _, c := range f.clients {
		n += c.sent.Load()
	}
	return n
}

// probeSlow finds out which non-reading clients the server disconnected:
// each one now reads (and discards) its backlog until a close frame, EOF or
// reset (disconnected) or until wait passes (still connected).
func probeSlow(f *fleet, wait time.Duration) {
	var wg sync.WaitGroup
	deadline := time.Now().Add(max(wait, time.Second))
	for _, c := range f.clients {
		if !c.slow || !c.up.Load() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.nc.SetReadDeadline(deadline)
			code, err := c.readFrames()
			if isTimeout(err) {
				return
			}
			c.closeCode, c.endErr = code, err
			c.dead.Store(true)
		}()
	}
	wg.Wait()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// sendPaced sends c's measured messages 1, 2, ... up to lastSeq, the first
// at first and then one every interval, while the next is due before end.
// It stops when ctx ends or c is no longer alive, and after a failed send
// when failed (which counts the failure) says to.
func (f *fleet) sendPaced(ctx context.Context, c *client, first, end time.Time, interval time.Duration, lastSeq int, failed func(error) (stop bool)) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	next := first
	for seq := 1; seq <= lastSeq && next.Before(end); seq++ {
		t.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !f.alive(c) {
			return
		}
		c.attempted = seq
		if err := c.sendBench(kindMeasured, seq); err != nil {
			if failed(err) {
				return
			}
		} else {
			c.sent.Add(1)
		}
		next = next.Add(interval)
	}
}
