package main

import (
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// -track: every client keeps a bitset of the measured messages it got,
// bit sender*perSender + seq-1. After the run the receivers of each server
// are compared message by message: a message that every receiver of a
// server missed was lost on its way to that server (the cluster relay),
// one that only some missed was lost to those clients. The first kind is
// what a relay must count (gochat_cluster_*), so that the report can tell
// counted loss from silent loss.

// tracker is the bit layout of a -track run.
type tracker struct {
	senders   int
	perSender int // the most sequences one sender can send in -duration
	words     int // uint64s per client
}

// trackBudget bounds the bitsets of one process.
const trackBudget = 2 << 30

func newTracker(cfg *Config, clients int) (*tracker, error) {
	per := int(math.Ceil(cfg.Duration.Seconds()*cfg.Rate)) + 1
	t := &tracker{senders: cfg.Senders, perSender: per, words: (cfg.Senders*per + 63) / 64}
	if need := t.words * 8 * clients; need > trackBudget {
		return nil, fmt.Errorf("-track needs %d MiB for %d clients × %d messages; send fewer messages or run more shards", need>>20, clients, cfg.Senders*per)
	}
	return t, nil
}

// record marks a measured message received by c (c's reader only).
func (t *tracker) record(c *client, bc benchContent) {
	if bc.sender < t.senders && bc.seq >= 1 && bc.seq <= t.perSender {
		markSeen(c.got, bc.sender*t.perSender+bc.seq-1)
	}
}

// missing counts, per message attempted (sequences 1..lastSeq[sender]),
// how many of receivers did not get it; only messages someone missed are
// in the map. Read after the readers exited.
func (t *tracker) missing(receivers []*client, lastSeq []int) map[string]int {
	total := 0
	for s := range min(len(lastSeq), t.senders) {
		total += min(lastSeq[s], t.perSender)
	}
	out := map[string]int{}
	for _, c := range receivers {
		n := 0
		for _, w := range c.got {
			n += bits.OnesCount64(w)
		}
		if n >= total {
			continue // got every one (bits past lastSeq cannot be set)
		}
		for s := range min(len(lastSeq), t.senders) {
			for q := 1; q <= min(lastSeq[s], t.perSender); q++ {
				i := s*t.perSender + q - 1
				if c.got[i/64]&(1<<(i%64)) == 0 {
					out[msgKey(s, q)]++
				}
			}
		}
	}
	return out
}

func msgKey(sender, seq int) string { return strconv.Itoa(sender) + ":" + strconv.Itoa(seq) }

// lossCounter reports whether a gochat_cluster_* counter counts messages
// lost or refused, and whether it is counted where they were published
// (then every other server misses them) rather than where they arrived.
func lossCounter(name string) (loss, publishSide bool) {
	for _, w := range []string{"drop", "error", "lost", "loss", "gap", "fail", "skip", "reject", "unsent"} {
		if strings.Contains(name, w) {
			return true, strings.Contains(name, "publish") || strings.Contains(name, "unsent")
		}
	}
	return false, false
}

// countedLoss is, per server, the messages the counters say it did not
// get: its own receive-side loss counters plus every other server's
// publish-side ones.
func countedLoss(nodes []NodeResult) []float64 {
	var published float64
	own := make([]float64, len(nodes))
	pub := make([]float64, len(nodes))
	for i, n := range nodes {
		for k, v := range n.Counters {
			switch loss, publishSide := lossCounter(k); {
			case loss && publishSide:
				pub[i] += v
				published += v
			case loss:
				own[i] += v
			}
		}
	}
	out := make([]float64, len(nodes))
	for i := range nodes {
		out[i] = own[i] + published - pub[i]
	}
	return out
}

// trackSummary fills each node's missed counts from its Missing map and
// returns the run's verdict. messages is how many were attempted.
func trackSummary(nodes []NodeResult, messages int, lost int64) *TrackStats {
	ts := &TrackStats{Messages: messages}
	counted := countedLoss(nodes)
	for i := range nodes {
		n := &nodes[i]
		whole, partly := 0, 0
		for _, v := range n.Missing {
			switch {
			case n.Receivers > 0 && v >= n.Receivers:
				whole++
			case v > 0:
				partly++
			}
		}
		n.MissedWhole, n.MissedPartly = ptr(whole), ptr(partly)
		ts.MissedByNode += whole
		ts.LostWithNode += uint64(whole) * uint64(n.Receivers)
		ts.Counted += counted[i]
		ts.Silent += max(0, float64(whole)-counted[i])
	}
	ts.LostAlone = lost - int64(ts.LostWithNode)
	return ts
}
