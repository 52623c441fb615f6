// Command bench is the gochat load harness. It opens thousands of
// WebSocket connections to a gochat server and measures what the server
// does with them: memory per idle connection (idle), broadcast throughput,
// loss and latency (broadcast), join-notice storms (storm) and slow-consumer
// handling (slow).
//
// Every figure is counted by the clients themselves, so a server that drops
// messages or clients shows it as lost messages and disconnects.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Config holds the flags of every subcommand.
type Config struct {
	URL         string
	URLs        []string // every -url (repeatable, or comma-separated); prepare sets URL to the first
	MetricsURL  string
	Conns       int
	JSON        bool
	PID         int
	DialRate    int
	DialWorkers int
	Timeout     time.Duration
	LocalAddrs  int
	AllowRemote bool

	Senders  int
	Rate     float64
	Duration time.Duration
	Size     int
	Drain    time.Duration
	Hold     time.Duration
	Slow     int
	Rooms    roomsConfig // rooms, and idle -rooms (rooms.go)

	// soak
	SlowPct   float64
	Churn     float64
	Sample    time.Duration
	Settle    time.Duration
	EvictWait time.Duration

	// Progress receives the live status line; nil disables it.
	Progress io.Writer

	// Several servers (multi.go): the nodes the clients are spread over,
	// this process's share of the clients and how the shards meet.
	Nodes        []nodeTarget // prepare: one per -url
	Shard        int          // -shard i/k: this process is shard i (0-based) ...
	Shards       int          // ... of k (0 or 1: one process holds every client)
	SyncDir      string       // -sync: directory the shards of one run meet in
	SyncTimeout  time.Duration
	SenderNodes  int    // -sender-nodes: senders only on the first N URLs (0: all)
	Track        bool   // -track: every client records which messages it got
	Rejoin       bool   // -rejoin: clients disconnected while sending are dialled again
	runID        string // the run id of every shard (shard.go); "" = a fresh one
	clockEpoch   int64  // unix ns the shards' fleet clocks count from; 0 = the fleet's start
	explicitNone bool   // -metrics none

	storm bool // clients track which join notices they saw
}

type scenario struct {
	run   func(context.Context, *Config) (Result, error)
	usage string
	flags func(*flag.FlagSet, *Config)
}

var scenarios = map[string]scenario{
	"idle": {runIdle, "connect and join -conns clients, hold them -hold, report server RSS per connection",
		func(fs *flag.FlagSet, c *Config) {
			fs.DurationVar(&c.Hold, "hold", 10*time.Second, "how long to hold the connections before sampling the server")
			fs.IntVar(&c.Rooms.Small, "rooms", 0, "spread the clients evenly over this many rooms (?room=NAME); 0: all in the default room")
		}},
	"broadcast": {runBroadcast, "-senders clients send -rate msg/s each for -duration; count deliveries, loss, latency",
		func(fs *flag.FlagSet, c *Config) {
			trafficFlags(fs, c)
			multiFlags(fs, c)
		}},
	"storm": {runStorm, "all clients join as fast as possible (server with -presence=true); time until every join notice arrived",
		func(fs *flag.FlagSet, c *Config) {
			fs.DurationVar(&c.Drain, "drain", 10*time.Second, "give up when no notice arrived for this long")
		}},
	"slow": {runSlow, "like broadcast, but the last -slow clients never read; count their disconnects and the healthy clients' loss",
		func(fs *flag.FlagSet, c *Config) {
			trafficFlags(fs, c)
			fs.IntVar(&c.Slow, "slow", 10, "clients that join and then never read")
			fs.Lookup("size").DefValue = "1000"
			c.Size = 1000
		}},
	"amplify":    {runAmplify, "-conns readers and -senders senders bursting 2,000 '<' (12 KB escaped); server RSS peak vs baseline, evictions, losses", hostileFlags(500, true)},
	"fragmented": {runFragmented, "-conns clients each send one 16 KB message in 1,024 fragments at once; control echo p99 and upgrade p99 meanwhile", hostileFlags(1000, false)},
	"storm20k":   {runStorm20k, "-conns clients (presence on) connect and join at once; drain time, peak server RSS, evictions, every join told by name or summary", hostileFlags(19800, false)},
	"soak": {runSoak, "hours-style endurance run: -senders send for -duration while -churn clients/s reconnect and -slow-pct never read; samples the server every -sample",
		func(fs *flag.FlagSet, c *Config) {
			trafficFlags(fs, c)
			fs.Lookup("duration").DefValue = "30m0s"
			c.Duration = 30 * time.Minute
			fs.Float64Var(&c.SlowPct, "slow-pct", 1, "percent of -conns that join and never read; each one the server evicts is replaced by a new slow client")
			fs.Float64Var(&c.Churn, "churn", 20, "healthy non-sender clients per second that close (1000) and are replaced by a new client with a fresh username")
			fs.DurationVar(&c.Sample, "sample", 10*time.Second, "interval of the progress line and of the time-series rows")
			fs.DurationVar(&c.Settle, "settle", 30*time.Second, "after closing every client, wait at most this long for the server's gochat_connections to reach 0")
			fs.DurationVar(&c.EvictWait, "evict-wait", 3*time.Second, "after sending, keep probing slow clients this long for evictions whose socket the server has not closed yet (gochat -close-linger, default 2s); ends early once the bench has seen every eviction the server counted")
		}},
	"rooms": {runRooms, "clients spread over -rooms rooms (plus one -big room), one sender per room; every client checks it gets exactly its own room's messages: lost, leaked, duplicates, latency", roomsFlags},
}

func trafficFlags(fs *flag.FlagSet, c *Config) {
	fs.IntVar(&c.Senders, "senders", 10, "clients that send (they also receive)")
	fs.Float64Var(&c.Rate, "rate", 5, "messages per second per sender (the server's default limit is 10/s)")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "how long the senders send")
	fs.IntVar(&c.Size, "size", 100, fmt.Sprintf("content bytes per message (min %d)", minContent))
	fs.DurationVar(&c.Drain, "drain", 5*time.Second, "after sending, wait at most this long for deliveries in flight")
}

func commonFlags(fs *flag.FlagSet, c *Config) {
	fs.Var((*urlList)(&c.URLs), "url", "server WebSocket URL (default ws://127.0.0.1:8080/ws); idle and broadcast take several: repeat -url or separate them with commas, and the clients are spread over them round-robin")
	fs.StringVar(&c.MetricsURL, "metrics", "", `server Prometheus URL (default: http://HOST:PORT/metrics from -url; "none" disables)`)
	fs.IntVar(&c.Conns, "conns", 1000, "number of connections")
	fs.BoolVar(&c.JSON, "json", false, "print one JSON object instead of the table")
	fs.IntVar(&c.PID, "pid", 0, "server pid for /proc sampling (default: the local process listening on the -url port; -1 disables)")
	fs.IntVar(&c.DialRate, "dial-rate", 0, "new connections per second during ramp-up (0 = as fast as -dial-workers allow)")
	fs.IntVar(&c.DialWorkers, "dial-workers", 64, "handshakes in flight during ramp-up")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "dial+handshake timeout, write timeout and join-confirmation timeout")
	fs.IntVar(&c.LocalAddrs, "local-addrs", 0, "spread connections over this many source addresses 127.0.0.1..N (default: 1 per 5000 conns, so the kernel's ephemeral-port search stays fast)")
	fs.BoolVar(&c.AllowRemote, "allow-remote", false, "allow a non-loopback -url (never point a load test at a host you do not own)")
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: bench <subcommand> [flags]\n\nSubcommands:\n")
	for _, name := range []string{"idle", "broadcast", "storm", "slow", "soak", "rooms"} {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", name, scenarios[name].usage)
	}
	fmt.Fprintf(os.Stderr, "  %-10s %s\n", "merge", "combine the -json results of the shards of one broadcast run (-shard i/k) into one report")
	fmt.Fprintf(os.Stderr, "\nRun 'bench <subcommand> -h' for its flags.\n")
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "-help" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	if os.Args[1] == "merge" {
		os.Exit(mergeMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	sc, ok := scenarios[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "bench: unknown subcommand %q\n\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	cfg := &Config{Progress: os.Stderr}
	fs := flag.NewFlagSet("bench "+os.Args[1], flag.ExitOnError)
	commonFlags(fs, cfg)
	sc.flags(fs, cfg)
	fs.Parse(os.Args[2:])
	if err := prepareFor(os.Args[1], cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := runScenario(ctx, sc, cfg)
	if res.Scenario != "" && (err == nil || res.Connected > 0) {
		if cfg.JSON {
			writeJSON(os.Stdout, &res)
		} else {
			writeTable(os.Stdout, &res)
		}
	}
	if err != nil {
		// After the report, so that it is the last thing a reader sees.
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// runScenario runs sc and turns a run that could not measure what it
// reports into an error: clients that could not connect (refused with 503,
// nothing listening...) are named with the first cause and the counts, so
// bench exits non-zero instead of printing a table of zeros.
func runScenario(ctx context.Context, sc scenario, cfg *Config) (Result, error) {
	res, err := sc.run(ctx, cfg)
	if cerr := res.connectErr(); cerr != nil {
		switch {
		case err == nil:
			err = cerr
		case !strings.Contains(err.Error(), "could not connect"):
			err = fmt.Errorf("%w; %w", err, cerr)
		}
	}
	return res, err
}

// prepareFor is prepare for subcommand name, which must accept several
// -url or -shard when they are given.
func prepareFor(name string, cfg *Config) error {
	if len(cfg.URLs) > 1 && name != "broadcast" && name != "idle" {
		return fmt.Errorf("%s takes one -url; only broadcast and idle spread clients over several servers", name)
	}
	if len(cfg.URLs) > 1 && cfg.Rooms.Small > 0 {
		return errors.New("idle -rooms takes one -url")
	}
	return prepare(cfg)
}

// prepare validates cfg and fills the defaults that depend on other flags.
func prepare(cfg *Config) error {
	if len(cfg.URLs) == 0 {
		cfg.URLs = []string{cmp.Or(cfg.URL, defaultURL)}
	}
	cfg.URL = cfg.URLs[0]
	loopback := true
	for _, raw := range cfg.URLs {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") {
			return fmt.Errorf("-url %q: want ws://host:port/path", raw)
		}
		if !isLoopbackHost(u.Hostname()) {
			loopback = false
			if !cfg.AllowRemote {
				return fmt.Errorf("-url host %q is not a loopback address; pass -allow-remote if you own that server", u.Hostname())
			}
		}
	}
	if cfg.Conns <= 0 {
		return errors.New("-conns must be > 0")
	}
	multi := len(cfg.URLs) > 1
	if multi && cfg.MetricsURL != "" && cfg.MetricsURL != "none" {
		return errors.New("-metrics names one server: with several -url each one's /metrics is used (or -metrics none)")
	}
	if multi && cfg.PID > 0 {
		return errors.New("-pid names one server: with several -url the process listening on each one's port is sampled (or -pid -1)")
	}
	switch cfg.MetricsURL {
	case "":
		cfg.MetricsURL = metricsURLFor(cfg.URL)
	case "none":
		cfg.MetricsURL = ""
		cfg.explicitNone = true
	}
	autoPID := cfg.PID == 0 && loopback
	switch {
	case autoPID && !multi:
		cfg.PID = findListenerPID(cfg.URL)
	case cfg.PID < 0:
		cfg.PID = 0
	}
	cfg.Nodes = make([]nodeTarget, len(cfg.URLs))
	var pids []int
	if multi && autoPID {
		pids = findListenerPIDs(cfg.URLs, nil)
	}
	for i, raw := range cfg.URLs {
		n := nodeTarget{URL: raw, MetricsURL: cfg.MetricsURL, PID: cfg.PID, autoPID: autoPID}
		if multi {
			n.MetricsURL, n.PID = "", 0
			if !cfg.explicitNone {
				n.MetricsURL = metricsURLFor(raw)
			}
			if pids != nil {
				n.PID = pids[i]
			}
		}
		cfg.Nodes[i] = n
	}
	if err := checkShards(cfg); err != nil {
		return err
	}
	if cfg.LocalAddrs == 0 {
		cfg.LocalAddrs = (cfg.Conns + portsPerSource - 1) / portsPerSource
	}
	if cfg.LocalAddrs > 1 && !loopback {
		return errors.New("-local-addrs > 1 needs a loopback -url")
	}
	lo, hi := cfg.shardRange()
	return checkFDLimit(hi - lo)
}

// checkFDLimit raises the soft open-file limit as far as the hard limit
// allows and fails early, with a clear message, if -conns cannot fit.
func checkFDLimit(conns int) error {
	const spare = 32 // stdio, /metrics, /proc reads, the runtime's own
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return nil
	}
	need := uint64(conns + spare)
	if lim.Cur < need && lim.Max > lim.Cur {
		lim.Cur = min(need, lim.Max)
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	if lim.Cur < need {
		return fmt.Errorf("-conns %d needs about %d file descriptors but this process may open only %d (ulimit -n, hard limit %d); "+
			"use at most %d connections per bench process", conns, need, lim.Cur, lim.Max, int(lim.Cur)-spare)
	}
	return nil
}
