package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// calls is what a closed loop of calls measured.
type calls struct {
	N       int64
	Elapsed time.Duration
	CPU     cpuUse
	lat     []time.Duration // every call's duration, sorted
}

func (c *calls) Rate() float64 { return float64(c.N) / c.Elapsed.Seconds() }

func (c *calls) Mean() time.Duration {
	if len(c.lat) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range c.lat {
		sum += d
	}
	return sum / time.Duration(len(c.lat))
}

func (c *calls) P(q float64) time.Duration { return percentile(c.lat, q) }

// percentile returns the q-quantile of sorted durations.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)-1))
	return sorted[i]
}

// closedLoop runs clients goroutines that call fn back to back for d, and
// times every call. i numbers the calls across goroutines from 0.
func closedLoop(ctx context.Context, clients int, d time.Duration, fn func(ctx context.Context, i int64) error) (*calls, error) {
	var next atomic.Int64
	lats := make([][]time.Duration, clients)
	g, gctx := errgroup.WithContext(ctx)
	cpuFrom := sampleCPU()
	start := time.Now()
	deadline := start.Add(d)
	for w := range clients {
		g.Go(func() error {
			for time.Now().Before(deadline) {
				if err := gctx.Err(); err != nil {
					return err
				}
				i := next.Add(1) - 1
				t := time.Now()
				if err := fn(gctx, i); err != nil {
					return err
				}
				lats[w] = append(lats[w], time.Since(t))
			}
			return nil
		})
	}
	err := g.Wait()
	elapsed := time.Since(start)
	if err != nil {
		return nil, err
	}
	out := &calls{Elapsed: elapsed, CPU: cpuFrom.until(sampleCPU())}
	for _, l := range lats {
		out.lat = append(out.lat, l...)
	}
	out.N = int64(len(out.lat))
	slices.Sort(out.lat)
	return out, nil
}

// forN calls fn for i in [0, n) from clients goroutines and returns how long
// that took.
func forN(ctx context.Context, clients int, n int, fn func(ctx context.Context, i int) error) (time.Duration, error) {
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	start := time.Now()
	for range min(clients, n) {
		g.Go(func() error {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return nil
				}
				if err := fn(gctx, i); err != nil {
					return err
				}
			}
		})
	}
	err := g.Wait()
	return time.Since(start), err
}

// paced calls fn rate times a second for d (an open loop: a call starts on
// schedule whatever the earlier ones do, up to maxInFlight at once), and
// returns how many calls it made.
func paced(ctx context.Context, rate float64, d time.Duration, maxInFlight int, fn func(ctx context.Context, i int) error) (int, error) {
	n := int(rate * d.Seconds())
	if n < 1 {
		n = 1
	}
	interval := time.Duration(float64(time.Second) / rate)
	sem := make(chan struct{}, maxInFlight)
	g, gctx := errgroup.WithContext(ctx)
	start := time.Now()
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			select {
			case <-time.After(wait):
			case <-gctx.Done():
			}
		}
		select {
		case sem <- struct{}{}:
		case <-gctx.Done():
		}
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			defer func() { <-sem }()
			return fn(gctx, i)
		})
	}
	return n, g.Wait()
}

// latencies pairs each job's enqueue commit with the end of its work.
type latencies struct {
	mu        sync.Mutex
	committed map[int64]time.Time
	done      map[int64]time.Time
	changed   chan struct{}
}

func newLatencies() *latencies {
	return &latencies{committed: map[int64]time.Time{}, done: map[int64]time.Time{}, changed: make(chan struct{}, 1)}
}

// Committed records that the transaction that enqueued job id committed.
func (l *latencies) Committed(id int64, at time.Time) {
	l.mu.Lock()
	l.committed[id] = at
	l.mu.Unlock()
}

// Done records that job id's work returned successfully (for a job
// completed in its own transaction: that transaction committed).
func (l *latencies) Done(id int64, at time.Time) {
	l.mu.Lock()
	if _, ok := l.done[id]; !ok {
		l.done[id] = at
	}
	l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// Count returns how many jobs are done.
func (l *latencies) Count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.done)
}

// Wait waits until every committed job is done, or ctx ends.
func (l *latencies) Wait(ctx context.Context) error {
	for {
		l.mu.Lock()
		missing := 0
		for id := range l.committed {
			if _, ok := l.done[id]; !ok {
				missing++
			}
		}
		l.mu.Unlock()
		if missing == 0 {
			return nil
		}
		select {
		case <-l.changed:
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("%d job(s) enqueued for the latency measure not done: %w", missing, ctx.Err())
		}
	}
}

// Sorted returns the latencies of the committed jobs, sorted.
func (l *latencies) Sorted() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]time.Duration, 0, len(l.committed))
	for id, c := range l.committed {
		if d, ok := l.done[id]; ok {
			out = append(out, max(d.Sub(c), 0))
		}
	}
	slices.Sort(out)
	return out
}

var errStop = errors.New("stop")
