package runner_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/runner"
)

// OrderArgs is a test job unique by its order id.
type OrderArgs struct {
	OrderID int64  `json:"order_id" river:"unique"`
	Note    string `json:"note"` // not part of the unique key
}

func (OrderArgs) Kind() string { return "test_order" }
func (OrderArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

// orderWorker records each order's effect in order_effects, in the job's
// transaction, failing the first failFirst attempts after writing.
type orderWorker struct {
	river.WorkerDefaults[OrderArgs]
	pool      *pgxpool.Pool
	failFirst int
	runs      atomic.Int64
}

func (w *orderWorker) Work(ctx context.Context, job *river.Job[OrderArgs]) error {
	w.runs.Add(1)
	return runner.WorkTx(ctx, w.pool, job, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO order_effects (order_id, job_id) VALUES ($1, $2)`, job.Args.OrderID, job.ID); err != nil {
			return err
		}
		if job.Attempt <= w.failFirst {
			return fmt.Errorf("attempt %d fails after writing its effect", job.Attempt)
		}
		return nil
	})
}

type fixture struct {
	db     *testdb.DB
	runner *runner.Runner
	worker *orderWorker
}

func setup(t *testing.T, cfg *runner.Config, dbOpts *testdb.Opts) *fixture {
	t.Helper()
	db := testdb.New(t, dbOpts)
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, `
		CREATE TABLE orders (id bigint PRIMARY KEY, note text NOT NULL DEFAULT '');
		CREATE TABLE order_effects (order_id bigint NOT NULL, job_id bigint NOT NULL, UNIQUE (order_id));`)
	require.NoError(t, err)
	w := &orderWorker{pool: db.Pool}
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	if cfg == nil {
		cfg = &runner.Config{}
	}
	if cfg.Workers == nil && !cfg.InsertOnly {
		cfg.Workers = workers
	}
	if cfg.RetryPolicy == nil {
		cfg.RetryPolicy = &runner.Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	}
	r, err := runner.New(db.Pool, cfg)
	require.NoError(t, err)
	return &fixture{db: db, runner: r, worker: w}
}

func (f *fixture) start(t *testing.T) {
	t.Helper()
	require.NoError(t, f.runner.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = f.runner.Stop(ctx)
	})
}

// enqueueOrder writes the order row and enqueues its job in one transaction.
func (f *fixture) enqueueOrder(ctx context.Context, id int64, note string) (*runner.EnqueueResult, error) {
	var res *runner.EnqueueResult
	err := pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders (id, note) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`, id, note); err != nil {
			return err
		}
		var err error
		res, err = f.runner.Enqueue(ctx, tx, OrderArgs{OrderID: id, Note: note}, nil)
		return err
	})
	return res, err
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNew_Validation(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, &testdb.Opts{Empty: true})
	workers := river.NewWorkers()
	river.AddWorker(workers, &orderWorker{})

	tests := []struct {
		name string
		cfg  *runner.Config
		ok   bool
	}{
		{"defaults with workers", &runner.Config{Workers: workers}, true},
		{"insert only needs no workers", &runner.Config{InsertOnly: true}, true},
		{"workers required", &runner.Config{}, false},
		{"zero-worker queue", &runner.Config{Workers: workers, Queues: map[string]river.QueueConfig{"q": {MaxWorkers: 0}}}, false},
		{"cooldown too short", &runner.Config{Workers: workers, FetchCooldown: time.Microsecond}, false},
		{"poll shorter than cooldown", &runner.Config{Workers: workers, FetchCooldown: time.Second, FetchPollInterval: 100 * time.Millisecond}, false},
		{"rescue before timeout", &runner.Config{Workers: workers, JobTimeout: time.Minute, RescueStuckJobsAfter: time.Second}, false},
		{"negative attempts", &runner.Config{Workers: workers, MaxAttempts: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runner.New(db.Pool, tt.cfg)
			if tt.ok {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, runner.ErrInvalidConfig)
			}
		})
	}
	_, err := runner.New(nil, nil)
	require.ErrorIs(t, err, runner.ErrInvalidConfig)
}

func TestRunner_Enqueue_RollbackLeavesNothing(t *testing.T) {
	t.Parallel()
	f := setup(t, &runner.Config{InsertOnly: true}, nil)
	ctx := context.Background()

	tx, err := f.db.Pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO orders (id) VALUES (1)`)
	require.NoError(t, err)
	res, err := f.runner.Enqueue(ctx, tx, OrderArgs{OrderID: 1}, nil)
	require.NoError(t, err)
	require.False(t, res.Duplicate)
	require.NoError(t, tx.Rollback(ctx))

	require.Zero(t, count(t, f.db.Pool, `SELECT count(*) FROM orders`))
	require.Zero(t, count(t, f.db.Pool, `SELECT count(*) FROM river_job`))

	// The same job enqueued again is new: the rolled-back one never existed.
	res, err = f.enqueueOrder(ctx, 1, "")
	require.NoError(t, err)
	require.False(t, res.Duplicate)
	require.Equal(t, 1, count(t, f.db.Pool, `SELECT count(*) FROM river_job`))
}

func TestRunner_Enqueue_NeedsTx(t *testing.T) {
	t.Parallel()
	f := setup(t, &runner.Config{InsertOnly: true}, &testdb.Opts{})
	_, err := f.runner.Enqueue(context.Background(), nil, OrderArgs{OrderID: 1}, nil)
	require.Error(t, err)
}

// SC-1: 50 transactions start together behind a barrier, each writing the
// business row and enqueueing the same unique job; 100 rounds.
func TestRunner_Enqueue_ConcurrentDuplicates(t *testing.T) {
	t.Parallel()
	const goroutines, rounds = 50, 100
	f := setup(t, &runner.Config{InsertOnly: true}, &testdb.Opts{MaxConns: goroutines})
	ctx := context.Background()

	for round := range rounds {
		orderID := int64(round + 1)
		var (
			wg      sync.WaitGroup
			gate    = make(chan struct{})
			results = make([]*runner.EnqueueResult, goroutines)
			errs    = make([]error, goroutines)
		)
		for i := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				results[i], errs[i] = f.enqueueOrder(ctx, orderID, fmt.Sprintf("caller %d", i))
			}()
		}
		close(gate)
		wg.Wait()

		inserted := 0
		for i := range goroutines {
			require.NoError(t, errs[i], "round %d caller %d", round, i)
			require.Equal(t, results[0].JobID, results[i].JobID, "round %d: every caller learns the same job id", round)
			if !results[i].Duplicate {
				inserted++
			}
		}
		require.Equal(t, 1, inserted, "round %d: exactly one caller inserted", round)
	}
	require.Equal(t, rounds, count(t, f.db.Pool, `SELECT count(*) FROM river_job`))
	require.Equal(t, rounds, count(t, f.db.Pool, `SELECT count(*) FROM orders`))
}

// The unique key covers only fields marked river:"unique": a different note
// is still the same order.
func TestRunner_Enqueue_UniqueFieldsOnly(t *testing.T) {
	t.Parallel()
	f := setup(t, &runner.Config{InsertOnly: true}, nil)
	ctx := context.Background()
	first, err := f.enqueueOrder(ctx, 7, "a")
	require.NoError(t, err)
	second, err := f.enqueueOrder(ctx, 7, "b")
	require.NoError(t, err)
	require.True(t, second.Duplicate)
	require.Equal(t, first.JobID, second.JobID)
	third, err := f.enqueueOrder(ctx, 8, "a")
	require.NoError(t, err)
	require.False(t, third.Duplicate)
}

// A failing attempt's effect is rolled back with it; the successful attempt
// commits effect and completion together.
func TestWorkTx_EffectAndCompletionCommitTogether(t *testing.T) {
	t.Parallel()
	f := setup(t, nil, nil)
	f.worker.failFirst = 2
	f.start(t)
	ctx := context.Background()
	res, err := f.enqueueOrder(ctx, 1, "")
	require.NoError(t, err)

	waitFor(t, 10*time.Second, "job completed", func() bool {
		return count(t, f.db.Pool, `SELECT count(*) FROM river_job WHERE id = $1 AND state = 'completed'`, res.JobID) == 1
	})
	require.EqualValues(t, 3, f.worker.runs.Load())
	require.Equal(t, 1, count(t, f.db.Pool, `SELECT count(*) FROM order_effects`))
	require.Equal(t, 3, count(t, f.db.Pool, `SELECT attempt FROM river_job WHERE id = $1`, res.JobID))
}

type keepArgs struct{}

func (keepArgs) Kind() string { return "test_keep" }

type keepWorker struct {
	river.WorkerDefaults[keepArgs]
	pool *pgxpool.Pool
}

func (w *keepWorker) Work(ctx context.Context, job *river.Job[keepArgs]) error {
	return runner.WorkTx(ctx, w.pool, job, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO attempts_log (job_id, attempt) VALUES ($1, $2)`, job.ID, job.Attempt); err != nil {
			return err
		}
		if job.Attempt < 3 {
			return runner.KeepChanges(errors.New("recorded, then failed"))
		}
		return nil
	})
}

// KeepChanges commits the failed attempt's record before River retries.
func TestWorkTx_KeepChanges(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, nil)
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, `CREATE TABLE attempts_log (job_id bigint, attempt int)`)
	require.NoError(t, err)
	workers := river.NewWorkers()
	river.AddWorker(workers, &keepWorker{pool: db.Pool})
	r, err := runner.New(db.Pool, &runner.Config{Workers: workers, RetryPolicy: &runner.Backoff{Min: 10 * time.Millisecond, Max: 10 * time.Millisecond}})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() { _ = r.Stop(context.Background()) })

	var jobID int64
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		res, err := r.Enqueue(ctx, tx, keepArgs{}, nil)
		jobID = res.JobID
		return err
	}))
	waitFor(t, 10*time.Second, "job completed", func() bool {
		return count(t, db.Pool, `SELECT count(*) FROM river_job WHERE id = $1 AND state = 'completed'`, jobID) == 1
	})
	require.Equal(t, 3, count(t, db.Pool, `SELECT count(*) FROM attempts_log WHERE job_id = $1`, jobID))
}

type stolenArgs struct{}

func (stolenArgs) Kind() string { return "test_stolen" }

type stolenWorker struct {
	river.WorkerDefaults[stolenArgs]
	pool   *pgxpool.Pool
	result chan error
}

func (w *stolenWorker) Work(ctx context.Context, job *river.Job[stolenArgs]) error {
	err := runner.WorkTx(ctx, w.pool, job, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO effects (job_id) VALUES ($1)`, job.ID); err != nil {
			return err
		}
		// Another process takes the job away (a rescue, a shutdown requeue)
		// while this attempt works.
		_, err := w.pool.Exec(ctx, `UPDATE river_job SET state = 'available', scheduled_at = now() + interval '1 hour' WHERE id = $1`, job.ID)
		return err
	})
	w.result <- err
	return river.JobCancel(errors.New("test done"))
}

// An attempt that can no longer complete its job rolls its effect back.
func TestWorkTx_JobNoLongerRunning(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, nil)
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, `CREATE TABLE effects (job_id bigint)`)
	require.NoError(t, err)
	w := &stolenWorker{pool: db.Pool, result: make(chan error, 1)}
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	r, err := runner.New(db.Pool, &runner.Config{Workers: workers})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() { _ = r.Stop(context.Background()) })
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		_, err := r.Enqueue(ctx, tx, stolenArgs{}, nil)
		return err
	}))
	select {
	case err := <-w.result:
		require.ErrorIs(t, err, runner.ErrJobNotRunning)
	case <-time.After(10 * time.Second):
		t.Fatal("worker did not run")
	}
	require.Zero(t, count(t, db.Pool, `SELECT count(*) FROM effects`))
}

// SC-3 (b): a unique job is discarded; a fresh duplicate is enqueued; an
// operator retries the discarded one: a typed conflict, the live job untouched.
func TestRunner_RetryJob_LiveDuplicate(t *testing.T) {
	t.Parallel()
	f := setup(t, &runner.Config{InsertOnly: true}, nil)
	ctx := context.Background()
	first, err := f.enqueueOrder(ctx, 42, "")
	require.NoError(t, err)
	_, err = f.db.Pool.Exec(ctx, `UPDATE river_job SET state = 'discarded', finalized_at = now() WHERE id = $1`, first.JobID)
	require.NoError(t, err)

	fresh, err := f.enqueueOrder(ctx, 42, "")
	require.NoError(t, err)
	require.False(t, fresh.Duplicate, "a discarded job does not hold the unique key")

	_, err = f.runner.RetryJob(ctx, first.JobID)
	var dup *runner.DuplicateJobError
	require.ErrorAs(t, err, &dup)
	require.Equal(t, fresh.JobID, dup.LiveJobID)
	require.Equal(t, "available", dup.LiveState)

	require.Equal(t, "discarded", stateOf(t, f.db.Pool, first.JobID))
	require.Equal(t, "available", stateOf(t, f.db.Pool, fresh.JobID))
	require.Equal(t, 1, count(t, f.db.Pool, `SELECT count(*) FROM orders WHERE id = 42`))

	_, err = f.runner.RetryJob(ctx, 999999)
	require.ErrorIs(t, err, runner.ErrJobNotFound)

	// Without a live duplicate the retry goes through.
	_, err = f.db.Pool.Exec(ctx, `UPDATE river_job SET state = 'cancelled', finalized_at = now() WHERE id = $1`, fresh.JobID)
	require.NoError(t, err)
	job, err := f.runner.RetryJob(ctx, first.JobID)
	require.NoError(t, err)
	require.Equal(t, rivertype.JobStateAvailable, job.State)
}

func stateOf(t *testing.T, pool *pgxpool.Pool, id int64) string {
	t.Helper()
	var s string
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT state::text FROM river_job WHERE id = $1`, id).Scan(&s))
	return s
}

func TestBackoff_Delay(t *testing.T) {
	t.Parallel()
	b := &runner.Backoff{Min: time.Second, Max: time.Minute}
	for attempt, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 6: 32 * time.Second, 7: time.Minute, 30: time.Minute} {
		for range 20 {
			d := b.Delay(attempt)
			require.GreaterOrEqual(t, d, min(time.Duration(float64(want)*0.9), time.Minute), "attempt %d", attempt)
			require.GreaterOrEqual(t, d, time.Second)
			require.LessOrEqual(t, d, min(time.Duration(float64(want)*1.1), time.Minute), "attempt %d", attempt)
		}
	}
	require.Equal(t, runner.BackoffMinDefault, (&runner.Backoff{}).Delay(1).Round(runner.BackoffMinDefault))
}

// A job this runner fetched but no longer works (its end could not be
// recorded, say the database went away) goes back to the queue without
// using an attempt; jobs it is working, and other runners' jobs, stay.
func TestRunner_RequeueOrphans(t *testing.T) {
	t.Parallel()
	f := setup(t, nil, nil) // not started: nothing works the jobs meanwhile
	ctx := context.Background()
	var ids []int64
	for i := range 3 {
		res, err := f.enqueueOrder(ctx, int64(i+1), "")
		require.NoError(t, err)
		ids = append(ids, res.JobID)
	}
	// Job 0 looks orphaned by this runner, job 1 by another runner, job 2
	// by this runner but recently fetched.
	_, err := f.db.Pool.Exec(ctx, `
		UPDATE river_job SET state = 'running', attempt = 1,
		       attempted_at = now() - CASE WHEN id = $3 THEN interval '1 second' ELSE interval '5 minutes' END,
		       attempted_by = ARRAY[CASE WHEN id = $2 THEN 'someone-else' ELSE $4 END]
		WHERE id = ANY($1)`, ids, ids[1], ids[2], f.runner.ID())
	require.NoError(t, err)
	f.runner.RequeueOrphans(ctx)
	require.Equal(t, "available", stateOf(t, f.db.Pool, ids[0]))
	require.Equal(t, "running", stateOf(t, f.db.Pool, ids[1]))
	require.Equal(t, "running", stateOf(t, f.db.Pool, ids[2]))
	var attempt int
	require.NoError(t, f.db.Pool.QueryRow(ctx, `SELECT attempt FROM river_job WHERE id = $1`, ids[0]).Scan(&attempt))
	require.Zero(t, attempt)
}

// keepFailsArgs is a job whose record cannot be committed.
type keepFailsArgs struct{}

func (keepFailsArgs) Kind() string { return "test_keep_fails" }

var errNextStep = errors.New("next step")

type keepFailsWorker struct {
	river.WorkerDefaults[keepFailsArgs]
	pool   *pgxpool.Pool
	result chan error
}

func (w *keepFailsWorker) Work(ctx context.Context, job *river.Job[keepFailsArgs]) error {
	err := runner.WorkTx(ctx, w.pool, job, func(ctx context.Context, tx pgx.Tx) error {
		// A deferred constraint fails at commit, as a lost connection would.
		if _, err := tx.Exec(ctx, `INSERT INTO deferred_check (v) VALUES (-1)`); err != nil {
			return err
		}
		return runner.KeepChanges(errNextStep)
	})
	w.result <- err
	return river.JobCancel(errors.New("test done"))
}

// When the commit of KeepChanges fails, the wrapped error is not returned:
// a caller that takes its next step on it (send, call) must not.
func TestWorkTx_KeepChangesCommitFails(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, nil)
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, `CREATE TABLE deferred_parent (id int PRIMARY KEY);
		CREATE TABLE deferred_check (v int REFERENCES deferred_parent (id) DEFERRABLE INITIALLY DEFERRED);`)
	require.NoError(t, err)
	w := &keepFailsWorker{pool: db.Pool, result: make(chan error, 1)}
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	r, err := runner.New(db.Pool, &runner.Config{Workers: workers})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() { _ = r.Stop(context.Background()) })
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		_, err := r.Enqueue(ctx, tx, keepFailsArgs{}, nil)
		return err
	}))
	select {
	case err := <-w.result:
		require.Error(t, err)
		require.NotErrorIs(t, err, errNextStep)
	case <-time.After(10 * time.Second):
		t.Fatal("worker did not run")
	}
}
