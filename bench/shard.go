package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Shards. One process holds at most ~19,900 sockets (the open-file limit),
// so a run of 100,000 clients is k bench processes, each started with
// -shard i/k and the same -sync DIR. They meet in DIR through files that
// each writes whole (a temporary name, then rename):
//
//	plan       shard 0: run id, clock epoch and the flags that must agree
//	ready-i    shard i has connected its clients and seen them confirmed
//	sent-i     shard i's senders are done: how many messages, last sequences
//	abort-i    shard i failed (the others stop waiting)
//
// Every shard waits for every ready-i before anyone sends, so no receiver
// joins late, and for every sent-i before it drains, so each one knows the
// total sent by all and its lost = sent × receivers − deliveries is exact.
// Every shard's clients use one run id (their names are unique across the
// shards: the client ids are global) and one clock: the wall clock, which
// the processes of one machine share, counted from the plan's epoch.

// shardPlan is what shard 0 decides for the run and the others check.
type shardPlan struct {
	RunID string `json:"run_id"`
	Epoch int64  `json:"epoch_unix_ns"`
	Flags string `json:"flags"`
}

// shardSent is what one shard's senders sent, and then the sum over shards.
type shardSent struct {
	Sent    uint64 `json:"sent"`
	LastSeq []int  `json:"last_seq"` // per sender id: the highest sequence attempted
}

type shardSync struct {
	dir           string
	shard, shards int
	timeout       time.Duration
}

// newShardSync is nil without -sync. A run of one process may use -sync
// too: its ready-0 file then tells a script that sending has begun.
func newShardSync(cfg *Config) *shardSync {
	if cfg.SyncDir == "" {
		return nil
	}
	return &shardSync{dir: cfg.SyncDir, shard: cfg.Shard, shards: max(cfg.Shards, 1), timeout: cmpDur(cfg.SyncTimeout, 10*time.Minute)}
}

func cmpDur(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// planFlags are the flags every shard of a run must share.
func planFlags(cfg *Config) string {
	return fmt.Sprintf("conns=%d senders=%d rate=%g duration=%s size=%d urls=%s sender-nodes=%d track=%t shards=%d",
		cfg.Conns, cfg.Senders, cfg.Rate, cfg.Duration, cfg.Size, strings.Join(urlsOf(cfg), ","), cfg.SenderNodes, cfg.Track, cfg.Shards)
}

func urlsOf(cfg *Config) []string {
	var out []string
	for _, t := range cfg.targets() {
		out = append(out, t.URL)
	}
	return out
}

// plan returns the run's plan: shard 0 writes it (refusing a directory
// that already holds one), the others wait for it and check their flags.
func (s *shardSync) plan(ctx context.Context, cfg *Config) (shardPlan, error) {
	want := planFlags(cfg)
	path := filepath.Join(s.dir, "plan")
	if s.shard == 0 {
		if err := os.MkdirAll(s.dir, 0o755); err != nil {
			return shardPlan{}, err
		}
		if _, err := os.Stat(path); err == nil {
			return shardPlan{}, fmt.Errorf("-sync %s already holds a run's plan: give each run a new directory", s.dir)
		}
		var b [runIDLen / 2]byte
		rand.Read(b[:])
		p := shardPlan{RunID: hex.EncodeToString(b[:]), Epoch: time.Now().UnixNano(), Flags: want}
		return p, s.write("plan", p)
	}
	var p shardPlan
	if err := s.wait(ctx, "the plan of shard 0", func() (bool, error) { return s.read("plan", &p) }); err != nil {
		return p, err
	}
	if p.Flags != want {
		return p, fmt.Errorf("shard 0 runs with %s, this shard with %s", p.Flags, want)
	}
	return p, nil
}

// ready says this shard's clients are confirmed and waits for every shard's.
func (s *shardSync) ready(ctx context.Context, connected int) error {
	if err := s.write(fmt.Sprintf("ready-%d", s.shard), map[string]int{"connected": connected}); err != nil {
		return err
	}
	return s.waitAll(ctx, "ready", nil)
}

// sent publishes what this shard sent and returns the sum over every shard.
func (s *shardSync) sent(ctx context.Context, mine shardSent) (shardSent, error) {
	if err := s.write(fmt.Sprintf("sent-%d", s.shard), mine); err != nil {
		return mine, err
	}
	var total shardSent
	err := s.waitAll(ctx, "sent", func(i int) error {
		var x shardSent
		if _, err := s.read(fmt.Sprintf("sent-%d", i), &x); err != nil {
			return err
		}
		total.Sent += x.Sent
		if len(x.LastSeq) > len(total.LastSeq) {
			total.LastSeq = append(total.LastSeq, make([]int, len(x.LastSeq)-len(total.LastSeq))...)
		}
		for j, q := range x.LastSeq {
			total.LastSeq[j] = max(total.LastSeq[j], q)
		}
		return nil
	})
	return total, err
}

// abort tells the other shards that this one failed.
func (s *shardSync) abort(cause error) {
	s.write(fmt.Sprintf("abort-%d", s.shard), map[string]string{"error": cause.Error()})
}

// waitAll waits until every shard wrote step-i, then calls each (if not
// nil) for every i.
func (s *shardSync) waitAll(ctx context.Context, step string, each func(i int) error) error {
	err := s.wait(ctx, "every shard's "+step, func() (bool, error) {
		for i := range s.shards {
			if _, err := os.Stat(filepath.Join(s.dir, fmt.Sprintf("%s-%d", step, i))); err != nil {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil || each == nil {
		return err
	}
	for i := range s.shards {
		if err := each(i); err != nil {
			return err
		}
	}
	return nil
}

// wait polls done every 50 ms until it says so, a shard aborts, ctx ends
// or the timeout passes.
func (s *shardSync) wait(ctx context.Context, what string, done func() (bool, error)) error {
	deadline := time.Now().Add(s.timeout)
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		if aborts, _ := filepath.Glob(filepath.Join(s.dir, "abort-*")); len(aborts) > 0 {
			slices.Sort(aborts)
			b, _ := os.ReadFile(aborts[0])
			return fmt.Errorf("waiting for %s: %s gave up: %s", what, filepath.Base(aborts[0]), strings.TrimSpace(string(b)))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s in %s: nothing after %s (-sync-timeout)", what, s.dir, s.timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// write stores v as name, whole: readers never see half of it.
func (s *shardSync) write(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := filepath.Join(s.dir, fmt.Sprintf(".%s.%d.tmp", name, os.Getpid()))
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(s.dir, name))
}

// read loads name into v; ok is false while it does not exist.
func (s *shardSync) read(name string, v any) (ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("%s: %w", filepath.Join(s.dir, name), err)
	}
	return true, nil
}
