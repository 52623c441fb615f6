package main

import "context"

// scenarioRun is what the fleet scenarios (idle, storm, broadcast/slow,
// rooms) share around their own logic: the fleet, the sampler of the
// server's figures and the progress ticker, and the sample taken when the
// measured window opens.
type scenarioRun struct {
	f      *fleet
	smp    *sampler
	prog   *progress
	before serverSample

	// several servers or shards: each server watched on its own, and what
	// each did in the window; sync is how the shards meet (nil: one process)
	nodes   *nodeWatches
	windows []nodeWindow
	sync    *shardSync
}

// startScenario starts the progress ticker for f; the caller defers close.
func startScenario(cfg *Config, f *fleet) *scenarioRun {
	s := &scenarioRun{f: f, smp: newSampler(cfg.PID, cfg.MetricsURL), prog: startProgress(f, cfg.Progress)}
	if cfg.perNode() {
		s.nodes = newNodeWatches(cfg)
		s.smp = newSampler(0, "") // the servers are sampled by s.nodes
	}
	return s
}

// close closes every client, then stops the ticker; it is deferred, and
// a no-op after stop.
func (s *scenarioRun) close() {
	s.f.closeAll()
	s.prog.end()
	if s.nodes != nil {
		s.nodes.close(context.Background())
	}
}

// stop ends the run before its result is accounted: the ticker first, so
// nothing is printed after the report starts, then the clients.
func (s *scenarioRun) stop() {
	s.prog.end()
	s.f.closeAll()
}

// open samples the server as the measured window opens.
func (s *scenarioRun) open(ctx context.Context) {
	s.before = s.smp.sample(ctx)
	if s.nodes != nil {
		s.nodes.open(ctx)
	}
}

// window samples the server as the measured window closes, fills
// res.Server from the two samples and returns the closing one.
func (s *scenarioRun) window(ctx context.Context, res *Result) serverSample {
	after := s.smp.sample(ctx)
	res.serverWindow(s.before, after)
	if s.nodes != nil {
		s.windows = s.nodes.close(ctx)
	}
	return after
}

// startSending connects and confirms every client (isSlow as for
// fleet.connect), then opens the window and enters the send phase; it
// returns the fleet clock at the start.
func (s *scenarioRun) startSending(ctx context.Context, isSlow func(int) bool, res *Result) (int64, error) {
	if err := s.f.connectConfirmed(ctx, isSlow, s.prog, res); err != nil {
		return 0, err
	}
	if s.sync != nil {
		s.prog.setPhase("wait shards")
		if err := s.sync.ready(ctx, res.Connected); err != nil {
			return 0, err
		}
	}
	s.prog.setPhase("send")
	s.open(ctx)
	return s.f.now(), nil
}

// startDraining enters the drain phase once sending ended (ctx's error if
// it ended early) and records what was sent.
func (s *scenarioRun) startDraining(ctx context.Context, res *Result) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.prog.setPhase("drain")
	res.Sent = s.f.sentTotal()
	s.f.lastSeq = s.f.localLastSeq()
	if s.sync != nil {
		s.prog.setPhase("wait shards")
		total, err := s.sync.sent(ctx, shardSent{Sent: res.Sent, LastSeq: s.f.lastSeq})
		if err != nil {
			return err
		}
		if res.Shard != nil {
			res.Shard.Sent = res.Sent
		}
		res.Sent, s.f.lastSeq = total.Sent, total.LastSeq
		s.prog.setPhase("drain")
	}
	return nil
}
