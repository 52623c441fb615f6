package pool

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// ants starts its package-level default pool at init; ours must end.
	goleak.VerifyTestMain(m, goleak.IgnoreCurrent())
}

type funcTask func()

func (f funcTask) Run() { f() }

// gate is a task that holds its worker until released.
type gate struct {
	started, release chan struct{}
}

func newGate() *gate { return &gate{make(chan struct{}), make(chan struct{})} }

func (g *gate) Run() { close(g.started); <-g.release }

func TestScheduleNeverBlocksOnAFullPoolAndRunsEveryTaskOnce(t *testing.T) {
	p, err := New(2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	g1, g2 := newGate(), newGate()
	p.Schedule(g1)
	p.Schedule(g2)
	<-g1.started
	<-g2.started

	const n = 10_000
	var ran [n]atomic.Int32
	var wg sync.WaitGroup
	wg.Add(n)
	for i := range n {
		// Both workers are held: every call must return without waiting.
		if err := p.Schedule(funcTask(func() { ran[i].Add(1); wg.Done() })); err != nil {
			t.Fatal(err)
		}
	}
	if s := p.Stats(); s.Waiting != n || s.Running != 2 || s.Queued != n {
		t.Fatalf("stats while full: %+v, want %d waiting, 2 running, %d queued", s, n, n)
	}
	close(g1.release)
	close(g2.release)
	wg.Wait()
	for i := range ran {
		if got := ran[i].Load(); got != 1 {
			t.Fatalf("task %d ran %d times", i, got)
		}
	}
}

func TestRunningNeverExceedsSize(t *testing.T) {
	const size = 3
	p, err := New(size, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var cur, peak atomic.Int32
	var wg sync.WaitGroup
	for range 2000 {
		wg.Add(1)
		p.Schedule(funcTask(func() {
			defer wg.Done()
			c := cur.Add(1)
			for {
				old := peak.Load()
				if c <= old || peak.CompareAndSwap(old, c) {
					break
				}
			}
			cur.Add(-1)
		}))
	}
	wg.Wait()
	if peak.Load() > size {
		t.Fatalf("%d tasks ran at once on a pool of %d", peak.Load(), size)
	}
}

func TestPanickingTaskDoesNotKillTheWorker(t *testing.T) {
	var got atomic.Value
	p, err := New(1, func(v any) { got.Store(v) })
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	done := make(chan struct{})
	p.Schedule(funcTask(func() { panic("boom") }))
	p.Schedule(funcTask(func() { close(done) }))
	<-done
	if got.Load() != "boom" {
		t.Fatalf("panic handler got %v", got.Load())
	}
	if s := p.Stats(); s.Panics != 1 {
		t.Fatalf("panics = %d", s.Panics)
	}
}

func TestScheduleAfterCloseFails(t *testing.T) {
	p, err := New(1, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	if err := p.Schedule(funcTask(func() {})); !errors.Is(err, ErrClosed) {
		t.Fatalf("Schedule after Close: %v", err)
	}
	p.Close() // idempotent
}

// slicedTask does its work in two halves and yields between them.
type slicedTask struct {
	p      *Pool
	during func() // called in the first half
	record func(string)
	half   int
	yields []bool // what each Yield reported
}

func (s *slicedTask) Run() {
	if s.half == 0 {
		s.record("first half")
		s.during()
		s.half = 1
		y := s.p.Yield(s)
		s.yields = append(s.yields, y)
		if y {
			return
		}
	}
	s.record("second half")
}

// A task that yields lets the tasks waiting for a worker run before its
// rest; with none waiting, it carries on at once.
func TestYieldRunsWaitingTasksFirst(t *testing.T) {
	p, err := New(1, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var mu sync.Mutex
	var order []string
	done := make(chan struct{})
	record := func(s string) {
		mu.Lock()
		order = append(order, s)
		mu.Unlock()
		if s == "second half" {
			close(done)
		}
	}
	waiting := funcTask(func() { record("waiting task") })
	long := &slicedTask{p: p, record: record, during: func() {
		if err := p.Schedule(waiting); err != nil { // the only worker is busy: it waits
			t.Error(err)
		}
	}}
	if err := p.Schedule(long); err != nil {
		t.Fatal(err)
	}
	<-done
	mu.Lock()
	got := strings.Join(order, ", ")
	mu.Unlock()
	if want := "first half, waiting task, second half"; got != want {
		t.Fatalf("ran %s, want %s", got, want)
	}
	if len(long.yields) != 1 || !long.yields[0] {
		t.Fatalf("Yield reported %v with a task waiting, want [true]", long.yields)
	}

	alone := &slicedTask{p: p, record: func(string) {}, during: func() {}}
	finished := make(chan struct{})
	if err := p.Schedule(funcTask(func() { alone.Run(); close(finished) })); err != nil {
		t.Fatal(err)
	}
	<-finished
	if len(alone.yields) != 1 || alone.yields[0] {
		t.Fatalf("Yield reported %v with nothing waiting, want [false]", alone.yields)
	}
}

func TestNewRejectsZeroSize(t *testing.T) {
	if _, err := New(0, nil); err == nil {
		t.Fatal("New(0) succeeded")
	}
}

// BenchmarkSchedule is the poller's cost to hand one task to the pool.
func BenchmarkSchedule(b *testing.B) {
	p, _ := New(2, nil)
	defer p.Close()
	var wg sync.WaitGroup
	task := funcTask(func() { wg.Done() })
	b.ReportAllocs()
	for b.Loop() {
		wg.Add(1)
		p.Schedule(task)
	}
	wg.Wait()
}
