package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/pgonce/pgonce/internal/progress"
)

// jobRun is one job scenario: a backlog enqueued before any worker starts,
// drained at full speed (throughput), then a paced load of LatencyRate jobs
// per second enqueued while the workers run (latency).
type jobRun struct {
	key, section, name, kind string
	note                     string
	pool                     *pgxpool.Pool
	n                        int
	// enqueue runs one business transaction that enqueues job i, and returns
	// the job's id once it committed.
	enqueue func(ctx context.Context, i int) (int64, error)
	start   func(ctx context.Context) error
	stop    func(ctx context.Context) error
	lat     *latencies
	// skipLatency leaves the latency phase out.
	skipLatency bool
}

// runJobs runs a job scenario and adds its result.
func (b *bench) runJobs(ctx context.Context, jr *jobRun) (*Result, error) {
	// Jobs already in the table (the growth section's) are not this run's.
	var after int64
	if err := jr.pool.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM river_job`).Scan(&after); err != nil {
		return nil, err
	}
	bar := progress.New(b.cfg.Progress, int64(jr.n), "enqueue "+jr.kind)
	took, err := forN(ctx, b.cfg.Clients, jr.n, func(ctx context.Context, i int) error {
		_, err := jr.enqueue(ctx, i)
		bar.Add(1)
		return err
	})
	bar.Finish()
	if err != nil {
		return nil, fmt.Errorf("enqueueing the backlog: %w", err)
	}
	b.logf("%s: %d jobs enqueued in business transactions in %s (%.0f/s)", jr.name, jr.n, took.Round(time.Millisecond), float64(jr.n)/took.Seconds())

	if err := jr.start(ctx); err != nil {
		return nil, err
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = jr.stop(context.WithoutCancel(ctx))
		}
	}()
	rate, cpu, err := b.drain(ctx, jr.pool, jr.kind, after, jr.n, jr.lat)
	if err != nil {
		return nil, err
	}
	res := &Result{Key: jr.key, Section: jr.section, Name: jr.name, Rate: rate, Unit: "jobs", Note: jr.note,
		MachineCPU: cpu.MachineBusy, OwnCPU: cpu.OwnCores}
	b.logf("%s: %.0f jobs/s (machine CPU %.0f%% busy, this process %.2f cores)", jr.name, rate, 100*cpu.MachineBusy, cpu.OwnCores)

	if !jr.skipLatency {
		// Well below the throughput: enqueueing costs about as much as
		// working, and a saturated system measures only its queue.
		offered := min(b.cfg.LatencyRate, rate/3)
		lat := jr.lat
		lat.mu.Lock()
		clear(lat.committed)
		lat.mu.Unlock()
		_, err := paced(ctx, offered, b.cfg.Duration, b.cfg.Clients, func(ctx context.Context, i int) error {
			id, err := jr.enqueue(ctx, jr.n+i)
			if err == nil {
				lat.Committed(id, time.Now())
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("latency phase: %w", err)
		}
		waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
		err = lat.Wait(waitCtx)
		cancel()
		if err != nil {
			return nil, err
		}
		sorted := lat.Sorted()
		res.P50Ms, res.P99Ms, res.LatencyAt = toMs(percentile(sorted, 0.5)), toMs(percentile(sorted, 0.99)), offered
		b.logf("%s: p50 %s, p99 %s at %.0f jobs/s", jr.name, percentile(sorted, 0.5).Round(10*time.Microsecond),
			percentile(sorted, 0.99).Round(10*time.Microsecond), offered)
	}
	stopped = true
	if err := jr.stop(ctx); err != nil {
		return nil, fmt.Errorf("stopping: %w", err)
	}
	return b.report.add(res), nil
}

// drain waits until n jobs of kind have completed and returns their
// throughput over the middle 90% of completions (by finalized_at), leaving
// out the start-up and the tail, and the CPU use over about the same span.
func (b *bench) drain(ctx context.Context, pool *pgxpool.Pool, kind string, after int64, n int, lat *latencies) (float64, cpuUse, error) {
	bar := progress.New(b.cfg.Progress, int64(n), "work "+kind)
	defer bar.Finish()
	timeout := max(time.Minute, time.Duration(n)*5*time.Millisecond)
	deadline := time.Now().Add(timeout)
	var from, to cpuSample
	// Progress from the workers' own count: counting rows in the database
	// every 100 ms would cost the phase a share of its CPU.
	for {
		done := lat.Count()
		bar.Set(int64(done))
		if from.at.IsZero() && done >= n/20 {
			from = sampleCPU()
		}
		if to.at.IsZero() && done >= n-n/20 {
			to = sampleCPU()
		}
		if done >= n {
			break
		}
		if time.Now().After(deadline) {
			return 0, cpuUse{}, b.drainFailure(ctx, pool, kind, after, n, timeout)
		}
		select {
		case <-ctx.Done():
			return 0, cpuUse{}, ctx.Err()
		case <-lat.changed:
		case <-time.After(100 * time.Millisecond):
		}
	}
	// The work is done; its completion may trail (River's completer).
	for {
		var completed int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE id > $2 AND kind = $1 AND state = 'completed'`, kind, after).Scan(&completed); err != nil {
			return 0, cpuUse{}, err
		}
		if completed >= n {
			break
		}
		if time.Now().After(deadline) {
			return 0, cpuUse{}, b.drainFailure(ctx, pool, kind, after, n, timeout)
		}
		select {
		case <-ctx.Done():
			return 0, cpuUse{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	var count int
	var first, last time.Time
	err := pool.QueryRow(ctx, `
		SELECT count(*),
		       percentile_disc(0.05) WITHIN GROUP (ORDER BY finalized_at),
		       percentile_disc(0.95) WITHIN GROUP (ORDER BY finalized_at)
		FROM river_job WHERE id > $2 AND kind = $1 AND state = 'completed'`, kind, after).Scan(&count, &first, &last)
	if err != nil {
		return 0, cpuUse{}, err
	}
	span := last.Sub(first)
	if span <= 0 {
		return 0, cpuUse{}, errors.New("the jobs completed too fast to time: raise Jobs")
	}
	return 0.9 * float64(count) / span.Seconds(), from.until(to), nil
}

// drainFailure says why a drain did not finish.
func (b *bench) drainFailure(ctx context.Context, pool *pgxpool.Pool, kind string, after int64, n int, timeout time.Duration) error {
	var done, failed int
	var lastErr *string
	err := pool.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE state = 'completed'),
		       count(*) FILTER (WHERE state IN ('retryable', 'discarded', 'cancelled')),
		       (array_agg(errors[array_upper(errors, 1)]->>'error') FILTER (WHERE errors IS NOT NULL))[1]
		FROM river_job WHERE id > $2 AND kind = $1`, kind, after).Scan(&done, &failed, &lastErr)
	if err != nil {
		return err
	}
	msg := fmt.Sprintf("only %d of %d %s jobs completed after %s", done, n, kind, timeout)
	if failed > 0 && lastErr != nil {
		msg += fmt.Sprintf("; %d failed, the last with: %s", failed, *lastErr)
	}
	return errors.New(msg)
}

// doneMiddleware tells a latencies when a job's work returned without error.
type doneMiddleware struct {
	river.MiddlewareDefaults
	lat *latencies
}

func (m *doneMiddleware) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	err := doInner(ctx)
	if err == nil {
		m.lat.Done(job.ID, time.Now())
	}
	return err
}

// businessTx runs fn in a transaction that first writes an order row, as a
// business write that causes a job would, and returns fn's job id once the
// transaction committed.
func businessTx(ctx context.Context, pool *pgxpool.Pool, n int, fn func(tx pgx.Tx, orderID int64) (int64, error)) (int64, error) {
	var jobID int64
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var orderID int64
		if err := tx.QueryRow(ctx, `INSERT INTO bench_orders (n) VALUES ($1) RETURNING id`, n).Scan(&orderID); err != nil {
			return err
		}
		var err error
		jobID, err = fn(tx, orderID)
		return err
	})
	return jobID, err
}
