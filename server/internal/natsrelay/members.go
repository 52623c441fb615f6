package natsrelay

import (
	"context"
	"encoding/hex"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gochat/server/internal/chat"
	"gochat/server/internal/chatmsg"
)

// The cluster's roster lives in two JetStream key-value buckets:
//
//   - members: one key per member, room token "." hex(name key), whose
//     value is the node holding it and the display name. A join creates
//     the key (create-if-absent), so a name is unique in a room across the
//     cluster; a leave deletes it.
//   - nodes: one key per live node, put every heartbeat; the bucket's TTL
//     (nodeTTL) removes a node that stopped putting.
//
// Every node watches the members bucket (a replica in memory, for GET
// /rooms and for the cleanup below). A node whose key is gone from the
// nodes bucket died: the survivors delete its members' keys, each with
// the revision it had, so exactly one survivor succeeds per member and
// publishes that member's leave notice. A node that stops gracefully
// publishes its members' leaves and deletes their keys itself.
type roster struct {
	mu       sync.Mutex             // Protects following.
	held     map[string]*claim      // keys this node holds for its members
	all      map[string]rosterEntry // the cluster's roster, from the watcher
	ready    bool                   // all holds the whole bucket (the watcher's initial values arrived)
	live     bool                   // this node's heartbeat is in the nodes bucket: claims go to the cluster
	reassert bool                   // names held here are to be claimed again (live came back)

	members, nodes atomicKV
	watcher        jetstream.KeyWatcher // the members watcher; presence goroutine only

	wake chan struct{} // cap 1: releases or a reconnection to handle
	// released are keys whose member left; the presence goroutine deletes them.
	released []string
}

// claim is one key held by this node.
type claim struct {
	room, name string
	rev        uint64 // the key's revision in the bucket; 0 until the cluster confirmed it
	released   bool   // the member left; the key is about to be deleted
}

// rosterEntry is one member in the cluster's roster.
type rosterEntry struct {
	node, name string
	rev        uint64
}

type atomicKV struct {
	mu sync.Mutex
	kv jetstream.KeyValue
}

func (a *atomicKV) load() jetstream.KeyValue {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.kv
}

func (a *atomicKV) store(kv jetstream.KeyValue) {
	a.mu.Lock()
	a.kv = kv
	a.mu.Unlock()
}

const (
	// nodeTTL is how long a node that stopped putting its heartbeat
	// (killed, cut off) stays in the nodes bucket. Its members leave
	// everywhere within nodeTTL + heartbeat.
	nodeTTL = 10 * time.Second
	// heartbeat is how often a node puts its key and looks for dead ones.
	heartbeat = 2 * time.Second
)

func (ro *roster) init() {
	ro.held = make(map[string]*claim)
	ro.all = make(map[string]rosterEntry)
	ro.wake = make(chan struct{}, 1)
}

func (ro *roster) poke() {
	select {
	case ro.wake <- struct{}{}:
	default:
	}
}

// memberKey is the members bucket's key of name key in room.
func memberKey(room, key string) string {
	return roomToken(room) + "." + hex.EncodeToString([]byte(key))
}

func memberValue(node, name string) []byte { return []byte(node + "\n" + name) }

func parseMemberValue(v []byte) (node, name string, ok bool) {
	node, name, ok = strings.Cut(string(v), "\n")
	return node, name, ok && len(node) == 16 && validName([]byte(name))
}

// Claim takes name (whose uniqueness key is key) in room for a member
// joining here: chatmsg.ErrUsernameTaken if a member on another node has
// it. While the cluster cannot be asked, the name is held here and claimed
// when it can (chat.Relay). Called by the joining session's task; waits at
// most apiTimeout.
func (c *Relay) Claim(room, key, name string) error {
	ro := &c.roster
	k := memberKey(room, key)
	ro.mu.Lock()
	if cl := ro.held[k]; cl != nil {
		// This node holds it: for a member still here the room itself says
		// the name is taken; one that just left gives it back (the key
		// stays, it is not deleted).
		cl.released = false
		cl.name = name
		ro.mu.Unlock()
		return nil
	}
	cl := &claim{room: room, name: name}
	ro.held[k] = cl
	live := ro.live
	ro.mu.Unlock()
	kv := ro.members.load()
	if !live || kv == nil {
		return nil // confirmed when the cluster is back (reassert)
	}
	rev, err := c.create(kv, k, name)
	ro.mu.Lock()
	defer ro.mu.Unlock()
	switch {
	case err == nil:
		cl.rev = rev
	case errors.Is(err, chatmsg.ErrUsernameTaken):
		if ro.held[k] == cl {
			delete(ro.held, k)
		}
		return err
	default:
		// NATS failed meanwhile: held here, claimed when it is back.
	}
	return nil
}

// create creates key k for name, or takes it over from a node that is no
// longer alive.
func (c *Relay) create(kv jetstream.KeyValue, k, name string) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	rev, err := kv.Create(ctx, k, memberValue(c.node, name))
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return rev, err
	}
	e, err := kv.Get(ctx, k)
	if err != nil {
		return 0, err
	}
	node, _, ok := parseMemberValue(e.Value())
	if ok && node != c.node && c.nodeAlive(ctx, node) {
		return 0, chatmsg.ErrUsernameTaken
	}
	// Ours from before, a dead node's, or junk: take it over.
	return kv.Update(ctx, k, memberValue(c.node, name), e.Revision())
}

// nodeAlive reports whether node's heartbeat is in the nodes bucket (true
// if that cannot be told: a name is never taken over on a guess).
func (c *Relay) nodeAlive(ctx context.Context, node string) bool {
	kv := c.roster.nodes.load()
	if kv == nil {
		return true
	}
	_, err := kv.Get(ctx, node)
	return !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted)
}

// Release gives name key back in room: its member left (chat.Relay).
// It never blocks; the key is deleted by the presence goroutine.
func (c *Relay) Release(room, key string) {
	ro := &c.roster
	k := memberKey(room, key)
	ro.mu.Lock()
	if cl := ro.held[k]; cl != nil && !cl.released {
		cl.released = true
		ro.released = append(ro.released, k)
	}
	ro.mu.Unlock()
	ro.poke()
}

// presence is the roster's goroutine: the members watcher, deletes of
// released keys, reasserting names after a reconnection, and the cleanup
// of dead nodes. Heartbeats have a goroutine of their own (beats), so that
// no amount of this work can delay them past nodeTTL.
func (c *Relay) presence() {
	defer close(c.presDone)
	ro := &c.roster
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	var updates <-chan jetstream.KeyValueEntry
	beating := false
	for {
		scan := false
		select {
		case <-c.quit:
			if beating {
				<-c.beatDone
			}
			c.leaveAll()
			if ro.watcher != nil {
				_ = ro.watcher.Stop()
			}
			return
		case e, ok := <-updates:
			if !ok {
				updates = nil
				continue
			}
			c.apply(e)
			continue
		case <-ro.wake:
		case <-tick.C:
			scan = true
		}
		if c.streamH.Load() == nil || !c.nc.IsConnected() {
			continue
		}
		if ro.members.load() == nil {
			if err := c.ensureBuckets(); err != nil {
				c.log.Warn("cluster roster not available; retrying", "err", err)
				continue
			}
			if w := c.watchMembers(); w != nil {
				updates = w.Updates()
			}
			if !beating {
				beating = true
				go c.beats()
			}
		}
		c.deleteReleased()
		if ro.takeReassert() {
			c.reassert()
		}
		if scan {
			c.cleanDeadNodes()
		}
	}
}

// beats puts this node's key in the nodes bucket every heartbeat, until
// Close. The first put that lands after the node was cut off (or at start)
// makes it claim its names in the cluster (reassert).
func (c *Relay) beats() {
	defer close(c.beatDone)
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		c.beat()
		select {
		case <-c.quit:
			return
		case <-tick.C:
		}
	}
}

// ensureBuckets creates or finds the roster's buckets.
func (c *Relay) ensureBuckets() error {
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	members, err := c.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: c.stream + "_MEMBERS", Description: "gochat members, one key per room and name", History: 1, Storage: jetstream.FileStorage,
	})
	if err != nil {
		return err
	}
	nodes, err := c.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: c.stream + "_NODES", Description: "live gochat nodes", History: 1, TTL: nodeTTL, Storage: jetstream.FileStorage,
	})
	if err != nil {
		return err
	}
	c.roster.nodes.store(nodes)
	c.roster.members.store(members)
	return nil
}

// watchMembers (re)starts the replica of the members bucket.
func (c *Relay) watchMembers() jetstream.KeyWatcher {
	ro := &c.roster
	if ro.watcher != nil {
		_ = ro.watcher.Stop()
	}
	ro.mu.Lock()
	ro.all, ro.ready = make(map[string]rosterEntry), false
	ro.mu.Unlock()
	w, err := ro.members.load().WatchAll(context.Background())
	if err != nil {
		c.log.Warn("cannot watch the cluster roster", "err", err)
		ro.watcher = nil
		return nil
	}
	ro.watcher = w
	return w
}

// apply takes one update of the members bucket into the replica; nil
// marks the end of the initial values.
func (c *Relay) apply(e jetstream.KeyValueEntry) {
	ro := &c.roster
	ro.mu.Lock()
	defer ro.mu.Unlock()
	if e == nil {
		ro.ready = true
		return
	}
	if e.Operation() != jetstream.KeyValuePut {
		delete(ro.all, e.Key())
		return
	}
	node, name, ok := parseMemberValue(e.Value())
	if !ok {
		return // not a gochat node's: ignored
	}
	ro.all[e.Key()] = rosterEntry{node: node, name: name, rev: e.Revision()}
}

func (ro *roster) isLive() bool {
	ro.mu.Lock()
	defer ro.mu.Unlock()
	return ro.live
}

func (ro *roster) setLive(live bool) {
	ro.mu.Lock()
	ro.live = live
	ro.mu.Unlock()
}

// beat puts this node's heartbeat; the first one lets claims go to the
// cluster, and has the names held here claimed there.
func (c *Relay) beat() {
	ro := &c.roster
	if !c.nc.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	if _, err := ro.nodes.load().Put(ctx, c.node, []byte(time.Now().UTC().Format(time.RFC3339))); err != nil {
		if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound) {
			// NATS came back without its store (no persistence): the
			// buckets are made again, and the names claimed again.
			ro.members.store(nil)
			ro.setLive(false)
			ro.poke()
		}
		return // a slow put is retried; a disconnection sets live false
	}
	ro.mu.Lock()
	first := !ro.live
	ro.live = true
	ro.reassert = ro.reassert || first
	ro.mu.Unlock()
	if first {
		ro.poke()
	}
}

// takeReassert reports, once, that names are to be claimed again; it
// waits for the replica of the members bucket, which reassert reads.
func (ro *roster) takeReassert() bool {
	ro.mu.Lock()
	defer ro.mu.Unlock()
	if !ro.reassert || !ro.ready {
		return false
	}
	ro.reassert = false
	return true
}

// reassert claims in the cluster every name this node holds: the ones
// taken while it could not be asked, and any the cluster dropped while
// this node was cut off (then the others were told those members left:
// they are told they are back). A name another node took meanwhile stays
// with both, and is counted.
func (c *Relay) reassert() {
	ro := &c.roster
	kv := ro.members.load()
	ro.mu.Lock()
	if !ro.live || kv == nil {
		ro.mu.Unlock()
		return
	}
	type hold struct {
		k string
		claim
	}
	var holds []hold
	for k, cl := range ro.held {
		if !cl.released {
			holds = append(holds, hold{k, *cl})
		}
	}
	ro.mu.Unlock()
	for _, h := range holds {
		// Asked of the bucket, not the replica: right after a reconnection
		// the replica may not have caught up with what the others deleted.
		ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
		e, err := kv.Get(ctx, h.k)
		cancel()
		if err == nil {
			if node, _, ok := parseMemberValue(e.Value()); ok && node == c.node {
				c.setRev(h.k, e.Revision()) // still ours
				continue
			}
		}
		rev, err := c.create(kv, h.k, h.name)
		switch {
		case err == nil:
			c.setRev(h.k, rev)
			if h.rev != 0 { // it was ours and the cluster dropped it
				_ = c.Publish(h.room, &chat.Message{Kind: chat.KindJoined, Count: 1, Name: h.name})
			}
		case errors.Is(err, chatmsg.ErrUsernameTaken):
			c.metrics.nameConflicts.Inc()
			c.log.Warn("a name held here was taken on another node while this node was cut off")
		default:
			ro.mu.Lock()
			ro.reassert = true // NATS failed meanwhile: again at the next chance
			ro.mu.Unlock()
			return
		}
	}
}

func (c *Relay) setRev(k string, rev uint64) {
	ro := &c.roster
	ro.mu.Lock()
	if cl := ro.held[k]; cl != nil {
		cl.rev = rev
	}
	ro.mu.Unlock()
}

// deleteReleased deletes the keys of members that left.
func (c *Relay) deleteReleased() {
	ro := &c.roster
	ro.mu.Lock()
	var dels []keyRev
	for _, k := range ro.released {
		if cl := ro.held[k]; cl != nil && cl.released {
			delete(ro.held, k)
			if cl.rev != 0 {
				dels = append(dels, keyRev{k, cl.rev})
			}
		}
	}
	ro.released = ro.released[:0]
	ro.mu.Unlock()
	c.deleteKeys(dels)
}

type keyRev struct {
	key string
	rev uint64
}

// deleteKeys deletes members' keys, each only at the revision given (a
// key taken since is left alone), many at a time; it returns the ones
// deleted.
func (c *Relay) deleteKeys(dels []keyRev) []keyRev {
	var done []keyRev
	for len(dels) > 0 {
		n := min(len(dels), maxInFlight)
		futures := make([]jetstream.PubAckFuture, 0, n)
		for _, d := range dels[:n] {
			m := nats.NewMsg("$KV." + c.stream + "_MEMBERS." + d.key)
			m.Header.Set("KV-Operation", "DEL")
			m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(d.rev, 10))
			f, err := c.js.PublishMsgAsync(m)
			if err != nil {
				return done
			}
			futures = append(futures, f)
		}
		timeout := time.NewTimer(apiTimeout)
		for i, f := range futures {
			select {
			case <-f.Ok():
				done = append(done, dels[i])
			case <-f.Err():
			case <-timeout.C:
				return done
			}
		}
		timeout.Stop()
		dels = dels[n:]
	}
	return done
}

// cleanDeadNodes finds members held by nodes whose heartbeat is gone, and
// deletes them; for each key it deletes (no other survivor did), it
// publishes the member's leave.
func (c *Relay) cleanDeadNodes() {
	ro := &c.roster
	ro.mu.Lock()
	if !ro.ready {
		ro.mu.Unlock()
		return
	}
	owners := map[string]bool{}
	for _, e := range ro.all {
		if e.node != c.node {
			owners[e.node] = true
		}
	}
	ro.mu.Unlock()
	// Each owner's heartbeat asked one by one: only a definite "not found"
	// is a death (a listing cut short by a slow server would look like
	// one).
	dead := map[string]bool{}
	for node := range owners {
		ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
		_, err := ro.nodes.load().Get(ctx, node)
		cancel()
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			dead[node] = true
		}
	}
	if len(dead) == 0 {
		return
	}
	ro.mu.Lock()
	var dels []keyRev
	names := map[string]string{}
	for k, e := range ro.all {
		if dead[e.node] {
			dels = append(dels, keyRev{k, e.rev})
			names[k] = e.name
		}
	}
	ro.mu.Unlock()
	if len(dels) == 0 {
		return
	}
	slices.SortFunc(dels, func(a, b keyRev) int { return strings.Compare(a.key, b.key) })
	done := c.deleteKeys(dels)
	for _, d := range done {
		tok, _, _ := strings.Cut(d.key, ".")
		_ = c.Publish(tokenRoom(tok), &chat.Message{Kind: chat.KindLeft, Count: 1, Name: names[d.key]})
	}
	c.metrics.ghosts.Add(float64(len(done)))
	if len(done) > 0 {
		c.log.Info("members of a node that stopped answering left the cluster", "count", len(done))
	}
}

// leaveAll, at shutdown, deletes the keys of the members still here (their
// leaves were published by the hub's drain) and this node's heartbeat.
func (c *Relay) leaveAll() {
	ro := &c.roster
	kv := ro.members.load()
	if kv == nil || !c.nc.IsConnected() {
		return
	}
	ro.mu.Lock()
	var dels []keyRev
	for k, cl := range ro.held {
		if cl.rev != 0 {
			dels = append(dels, keyRev{k, cl.rev})
		}
	}
	ro.held = map[string]*claim{}
	ro.mu.Unlock()
	c.deleteKeys(dels)
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	_ = ro.nodes.load().Delete(ctx, c.node)
}

// Rooms lists the cluster's rooms with their member counts (GET /rooms):
// up to limit by name, with the total; ok is false while the roster is
// not known (NATS out of reach).
func (c *Relay) Rooms(limit int) (rooms []chat.RoomInfo, total int, ok bool) {
	counts := map[string]int{}
	ro := &c.roster
	ro.mu.Lock()
	if !ro.ready || !c.nc.IsConnected() {
		ro.mu.Unlock()
		return nil, 0, false
	}
	for k := range ro.all {
		tok, _, _ := strings.Cut(k, ".")
		counts[tokenRoom(tok)]++
	}
	ro.mu.Unlock()
	names := make([]string, 0, len(counts))
	for n := range counts {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names[:min(limit, len(names))] {
		rooms = append(rooms, chat.RoomInfo{Name: n, Members: counts[n]})
	}
	return rooms, len(names), true
}

// RoomMembers lists up to limit members of room across the cluster,
// sorted, with their total; ok is false while the roster is not known.
func (c *Relay) RoomMembers(room string, limit int) (names []string, total int, ok bool) {
	prefix := roomToken(room) + "."
	ro := &c.roster
	ro.mu.Lock()
	if !ro.ready || !c.nc.IsConnected() {
		ro.mu.Unlock()
		return nil, 0, false
	}
	for k, e := range ro.all {
		if strings.HasPrefix(k, prefix) {
			names = append(names, e.name)
		}
	}
	ro.mu.Unlock()
	slices.Sort(names)
	return names[:min(limit, len(names))], len(names), true
}
