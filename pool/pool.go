// Package pool schedules connection work onto a bounded set of goroutines
// without ever blocking the caller.
//
// The reactor's poller goroutine hands every readable connection to a Pool.
// The poller must never block (a blocked poller freezes every connection) and
// must never spin (re-arming a socket it could not hand off burns a core), so
// Schedule only appends the task to a queue and, when fewer than Size drainers
// are running, starts one on the ants pool. Drainers run queued tasks until the
// queue is empty. The queue is bounded by construction: the reactor schedules
// each connection at most once at a time (see server.Conn's sched state), so it
// never holds more entries than there are connections plus shard tasks.
package pool

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/panjf2000/ants/v2"
)

// Task is a unit of work. Passing a pointer that implements Task (for example
// a connection) does not allocate, unlike a closure.
type Task interface {
	Run()
}

// ErrClosed is returned by Schedule after Close.
var ErrClosed = errors.New("pool: closed")

// Pool runs Tasks on at most Size goroutines. All methods are safe for
// concurrent use.
type Pool struct {
	workers *ants.Pool
	size    int
	drainFn func() // p.drain bound once, so starting a drainer does not allocate

	mu      sync.Mutex // Protects following.
	queue   ring
	active  int // drainers started and not yet finished
	closed  bool
	peakLen int

	// Counters for metrics; updated outside mu where possible.
	scheduled atomic.Uint64 // tasks accepted by Schedule
	queued    atomic.Uint64 // tasks that found every worker busy and waited in the queue
	retries   atomic.Uint64 // ants refused a worker in its hand-back window; see startDrainer
	panics    atomic.Uint64
	panicFn   func(v any)
}

// New returns a Pool running at most size tasks at once. onPanic, if not nil,
// is called with the value of a panic that escaped a Task (the Task itself is
// expected to recover and clean up its own state; this is the last resort that
// keeps the worker alive).
func New(size int, onPanic func(v any)) (*Pool, error) {
	if size < 1 {
		return nil, fmt.Errorf("pool: size %d < 1", size)
	}
	w, err := ants.NewPool(size,
		ants.WithNonblocking(true),
		ants.WithPreAlloc(false),
	)
	if err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	p := &Pool{workers: w, size: size, panicFn: onPanic}
	p.drainFn = p.drain
	return p, nil
}

// Size is the maximum number of tasks running at once.
func (p *Pool) Size() int { return p.size }

// Schedule queues t to run on a worker. It never blocks on a busy pool and never
// waits for a task to finish. Safe for concurrent use.
func (p *Pool) Schedule(t Task) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	p.queue.push(t)
	start := p.active < p.size
	if start {
		p.active++
	} else if n := p.queue.len(); n > p.peakLen {
		p.peakLen = n
	}
	p.mu.Unlock()

	p.scheduled.Add(1)
	if start {
		p.startDrainer()
	} else {
		p.queued.Add(1)
	}
	return nil
}

// Yield lets the tasks queued behind busy workers run before the rest of
// a long task: if any are waiting, it queues t behind them and reports
// true, and the caller must return from Run at once (t runs again, on
// this or another worker, when its turn comes). With nothing waiting, or
// the pool closed, it reports false and the caller carries on. A task that
// yields between slices of its work keeps the pool's workers from being
// held by a few long tasks while short ones (reads) wait. Called from a
// running task only.
func (p *Pool) Yield(t Task) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.queue.len() == 0 {
		return false
	}
	p.queue.push(t) // this drainer stays active and pops it in its turn
	return true
}

// startDrainer hands a drainer to ants. active < size was checked under mu,
// so ants has a free worker except in one window: a drainer that has just
// decremented active is still on its way back into ants' idle list. That
// worker is running no task and returns in nanoseconds, so yielding until it
// does is bounded; the retry counter makes the window visible.
func (p *Pool) startDrainer() {
	for {
		err := p.workers.Submit(p.drainFn)
		if err == nil {
			return
		}
		if !errors.Is(err, ants.ErrPoolOverload) {
			// The ants pool was released under us (Close raced with Schedule):
			// run the queue on this goroutine rather than strand it.
			p.drain()
			return
		}
		p.retries.Add(1)
		runtime.Gosched()
	}
}

// drain runs queued tasks until the queue is empty.
func (p *Pool) drain() {
	for {
		p.mu.Lock()
		t, ok := p.queue.pop()
		if !ok {
			p.active--
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		p.run(t)
	}
}

func (p *Pool) run(t Task) {
	defer func() {
		if v := recover(); v != nil {
			p.panics.Add(1)
			if p.panicFn != nil {
				p.panicFn(v)
			}
		}
	}()
	t.Run()
}

// Stats is a snapshot of the pool's counters.
type Stats struct {
	Size      int    // maximum concurrent tasks
	Running   int    // drainers running now
	Waiting   int    // tasks queued behind busy workers now
	PeakWait  int    // largest Waiting seen
	Scheduled uint64 // tasks accepted in total
	Queued    uint64 // tasks that had to wait for a worker (overload events)
	Retries   uint64 // hand-back window retries (see startDrainer)
	Panics    uint64 // panics that escaped a task
}

// Stats returns a snapshot of the counters. Safe for concurrent use.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	s := Stats{Size: p.size, Running: p.active, Waiting: p.queue.len(), PeakWait: p.peakLen}
	p.mu.Unlock()
	s.Scheduled = p.scheduled.Load()
	s.Queued = p.queued.Load()
	s.Retries = p.retries.Load()
	s.Panics = p.panics.Load()
	return s
}

// Close stops accepting tasks, lets queued ones finish and releases the
// workers. Safe for concurrent use; later calls do nothing.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	// ReleaseTimeout waits for running drainers, which finish the queue.
	_ = p.workers.ReleaseTimeout(5e9)
}

// ring is a growable FIFO of Tasks. Not safe for concurrent use.
type ring struct {
	buf        []Task
	head, size int
}

func (r *ring) len() int { return r.size }

func (r *ring) push(t Task) {
	if r.size == len(r.buf) {
		n := max(2*len(r.buf), 64)
		buf := make([]Task, n)
		k := copy(buf, r.buf[r.head:])
		copy(buf[k:], r.buf[:r.head])
		r.buf, r.head = buf, 0
	}
	r.buf[(r.head+r.size)%len(r.buf)] = t
	r.size++
}

func (r *ring) pop() (Task, bool) {
	if r.size == 0 {
		return nil, false
	}
	t := r.buf[r.head]
	r.buf[r.head] = nil
	r.head = (r.head + 1) % len(r.buf)
	r.size--
	return t, true
}
