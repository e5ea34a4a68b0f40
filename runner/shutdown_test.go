package runner_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/runner"
)

// LongArgs is a long job; Stubborn ones ignore cancellation.
type LongArgs struct {
	N        int  `json:"n"`
	Stubborn bool `json:"stubborn"`
}

func (LongArgs) Kind() string { return "test_long" }

type longWorker struct {
	river.WorkerDefaults[LongArgs]
	pool     *pgxpool.Pool
	duration time.Duration // how long a run takes when not stopped
	started  atomic.Int64
	release  chan struct{} // closed when the stubborn goroutines may end
}

func (w *longWorker) Work(ctx context.Context, job *river.Job[LongArgs]) error {
	w.started.Add(1)
	if job.Args.Stubborn {
		// Ignores ctx entirely, like a worker stuck in a call without a
		// timeout.
		select {
		case <-time.After(w.duration):
		case <-w.release:
			return errors.New("released after the test")
		}
	} else {
		select {
		case <-time.After(w.duration):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return runner.WorkTx(context.WithoutCancel(ctx), w.pool, job, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO long_done (n, job_id) VALUES ($1, $2)`, job.Args.N, job.ID)
		return err
	})
}

// SC-8: 20 long jobs are running, half of them ignore cancellation; a stop
// with a 10 s budget; a new process starts. Variant: max attempts 1.
func TestRunner_Stop_SC8(t *testing.T) {
	t.Parallel()
	for _, maxAttempts := range []int{runner.MaxAttemptsDefault, 1} {
		t.Run("max_attempts_"+map[int]string{1: "1", runner.MaxAttemptsDefault: "default"}[maxAttempts], func(t *testing.T) {
			t.Parallel()
			testStopSC8(t, maxAttempts)
		})
	}
}

func testStopSC8(t *testing.T, maxAttempts int) {
	const jobs, budget = 20, 10 * time.Second
	db := testdb.New(t, &testdb.Opts{MaxConns: 40})
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, `CREATE TABLE long_done (n int PRIMARY KEY, job_id bigint NOT NULL)`)
	require.NoError(t, err)

	newRunner := func(w *longWorker) *runner.Runner {
		workers := river.NewWorkers()
		river.AddWorker(workers, w)
		r, err := runner.New(db.Pool, &runner.Config{
			Workers: workers, MaxAttempts: maxAttempts, JobTimeout: -1,
			Queues: map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: jobs}},
		})
		require.NoError(t, err)
		return r
	}

	first := &longWorker{pool: db.Pool, duration: time.Hour, release: make(chan struct{})}
	defer close(first.release)
	r1 := newRunner(first)
	require.NoError(t, r1.Start(ctx))
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		for i := range jobs {
			if _, err := r1.Enqueue(ctx, tx, LongArgs{N: i, Stubborn: i%2 == 0}, nil); err != nil {
				return err
			}
		}
		return nil
	}))
	waitFor(t, 10*time.Second, "all jobs running", func() bool { return first.started.Load() == jobs })

	stopCtx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	start := time.Now()
	err = r1.Stop(stopCtx)
	took := time.Since(start)
	// Within the budget, give or take the requeue statement itself, which
	// runs in the last half second and on a loaded machine may overrun it.
	require.LessOrEqual(t, took, budget+time.Second, "Stop must return within its budget")
	var shutdownErr *runner.ShutdownError
	require.ErrorAs(t, err, &shutdownErr)
	require.Len(t, shutdownErr.Requeued, jobs/2, "the stubborn half was requeued")

	// Nothing left running, nothing discarded, no attempt used.
	require.Zero(t, count(t, db.Pool, `SELECT count(*) FROM river_job WHERE state = 'running'`))
	require.Zero(t, count(t, db.Pool, `SELECT count(*) FROM river_job WHERE state IN ('discarded', 'cancelled', 'retryable')`))
	require.Equal(t, jobs, count(t, db.Pool, `SELECT count(*) FROM river_job WHERE state IN ('available', 'scheduled') AND attempt = 0`))

	// A new process works each job once.
	second := &longWorker{pool: db.Pool, duration: 10 * time.Millisecond, release: make(chan struct{})}
	defer close(second.release)
	r2 := newRunner(second)
	require.NoError(t, r2.Start(ctx))
	defer r2.Stop(ctx) //nolint:errcheck
	waitFor(t, 20*time.Second, "every job completed", func() bool {
		return count(t, db.Pool, `SELECT count(*) FROM river_job WHERE state = 'completed'`) == jobs
	})
	require.Equal(t, jobs, count(t, db.Pool, `SELECT count(*) FROM long_done`))
	require.Equal(t, jobs, count(t, db.Pool, `SELECT count(*) FROM river_job WHERE attempt = 1`))
}

// A stop whose jobs all finish in time returns nil and leaves them completed.
func TestRunner_Stop_Graceful(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, nil)
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, `CREATE TABLE long_done (n int PRIMARY KEY, job_id bigint NOT NULL)`)
	require.NoError(t, err)
	w := &longWorker{pool: db.Pool, duration: 500 * time.Millisecond, release: make(chan struct{})}
	defer close(w.release)
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	r, err := runner.New(db.Pool, &runner.Config{Workers: workers})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		for i := range 5 {
			if _, err := r.Enqueue(ctx, tx, LongArgs{N: i}, nil); err != nil {
				return err
			}
		}
		return nil
	}))
	waitFor(t, 10*time.Second, "jobs running", func() bool { return w.started.Load() == 5 })
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, r.Stop(stopCtx))
	require.Equal(t, 5, count(t, db.Pool, `SELECT count(*) FROM river_job WHERE state = 'completed'`))
	require.NoError(t, r.Stop(stopCtx), "a second Stop is a no-op")
}
