package auditing

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
)

// ErrClosed is returned by [Async.Write] after [Async.Close].
var ErrClosed = errors.New("auditing: async sink is closed")

// Async delivers events to another sink in the background, in order, from a
// bounded buffer. Write never blocks: when the buffer cannot take a batch,
// the whole batch is dropped and counted.
//
// Dropping is deliberate and visible: the dropped events were already
// sealed into the chain, so [Verify] over what the wrapped sink stored
// reports the gap as "missing". [Async.Dropped] is the number to alert on;
// it also counts events lost because the wrapped sink returned an error.
//
// Use Async only for secondary sinks (a log, a SIEM feed). The primary
// audit store should be written synchronously inside [Chain.Append], so that
// a failed write fails the audited operation instead of losing its record.
type Async struct {
	sink Sink
	max  int

	mu      sync.Mutex
	cond    *sync.Cond
	queue   []asyncBatch
	pending int // events in queue, not counting the batch being delivered
	closed  bool
	abort   bool  // Close gave up: drop what is left
	err     error // first delivery error

	dropped atomic.Uint64
	done    chan struct{}
}

type asyncBatch struct {
	ctx    context.Context
	events []Event
}

// NewAsync starts delivering to s from a buffer of up to buffer events (at
// least 1). A batch larger than the free room is dropped whole, so make
// buffer larger than the largest batch (a query's row count). Call Close to
// flush and stop.
func NewAsync(s Sink, buffer int) *Async {
	a := &Async{sink: s, max: max(buffer, 1), done: make(chan struct{})}
	a.cond = sync.NewCond(&a.mu)
	go a.run()
	return a
}

// Write queues a copy of events for delivery and returns nil, or, if the
// buffer lacks room for all of them, drops them, adds their number to
// Dropped and returns nil too (the loss shows up in Dropped and as a gap in
// verification, not as a failure of the audited operation). After Close it
// drops the events and returns ErrClosed. The context passed to the wrapped
// sink keeps ctx's values but not its cancellation.
func (a *Async) Write(ctx context.Context, events []Event) error {
	if len(events) == 0 {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		a.dropped.Add(uint64(len(events)))
		return ErrClosed
	}
	if a.pending+len(events) > a.max {
		a.dropped.Add(uint64(len(events)))
		return nil
	}
	a.queue = append(a.queue, asyncBatch{ctx: context.WithoutCancel(ctx), events: slices.Clone(events)})
	a.pending += len(events)
	a.cond.Signal()
	return nil
}

// Dropped returns the number of events dropped so far: those that found the
// buffer full, those written after Close or abandoned by a Close whose
// context ended, and those the wrapped sink failed to store. Alert on it
// becoming non-zero.
func (a *Async) Dropped() uint64 { return a.dropped.Load() }

// Close stops accepting events and waits until the buffered ones are
// delivered. If ctx ends first, the events still buffered are dropped
// (counted in Dropped) and ctx's error is returned; a delivery in progress
// finishes in the background. Otherwise Close returns the first error the
// wrapped sink returned, if any. Close may be called more than once.
func (a *Async) Close(ctx context.Context) error {
	a.mu.Lock()
	a.closed = true
	a.cond.Signal()
	a.mu.Unlock()
	select {
	case <-a.done:
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.err
	case <-ctx.Done():
		a.mu.Lock()
		a.abort = true
		a.dropped.Add(uint64(a.pending))
		a.queue, a.pending = nil, 0
		a.cond.Signal()
		a.mu.Unlock()
		return ctx.Err()
	}
}

func (a *Async) run() {
	defer close(a.done)
	for {
		a.mu.Lock()
		for len(a.queue) == 0 && !a.closed {
			a.cond.Wait()
		}
		if len(a.queue) == 0 || a.abort {
			a.mu.Unlock()
			return
		}
		b := a.queue[0]
		a.queue[0] = asyncBatch{}
		a.queue = a.queue[1:]
		a.pending -= len(b.events)
		a.mu.Unlock()

		err := a.sink.Write(b.ctx, b.events)

		a.mu.Lock()
		if err != nil {
			a.dropped.Add(uint64(len(b.events)))
			if a.err == nil {
				a.err = err
			}
		}
		a.mu.Unlock()
	}
}
