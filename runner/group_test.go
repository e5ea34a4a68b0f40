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
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/runner"
)

func groupDB(t *testing.T) *testdb.DB {
	t.Helper()
	db := testdb.New(t, &testdb.Opts{Empty: true, MaxConns: 40})
	_, err := db.Pool.Exec(context.Background(), `
		CREATE TABLE effects (id int PRIMARY KEY, txid bigint NOT NULL);
		CREATE TABLE deferred (k int, CONSTRAINT deferred_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED);`)
	require.NoError(t, err)
	return db
}

// together starts n goroutines at once and waits for them.
func together(n int, fn func(i int)) {
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			fn(i)
		}()
	}
	close(gate)
	wg.Wait()
}

func TestGroup_CommitsManyJobsTogether(t *testing.T) {
	t.Parallel()
	db := groupDB(t)
	g, err := runner.NewGroup(db.Pool, &runner.GroupConfig{Lanes: 1, MaxDelay: 50 * time.Millisecond})
	require.NoError(t, err)
	ctx := context.Background()

	const n = 40
	errs := make([]error, n)
	together(n, func(i int) {
		errs[i] = func() error {
			tx, err := g.Begin(ctx)
			if err != nil {
				return err
			}
			defer tx.Rollback(ctx) //nolint:errcheck
			if _, err := tx.Exec(ctx, `INSERT INTO effects VALUES ($1, txid_current())`, i); err != nil {
				return err
			}
			return tx.Commit(ctx)
		}()
	})
	for i, err := range errs {
		require.NoError(t, err, "job %d", i)
	}
	require.Equal(t, n, count(t, db.Pool, `SELECT count(*) FROM effects`))
	txids := count(t, db.Pool, `SELECT count(DISTINCT txid) FROM effects`)
	st := g.Stats()
	require.EqualValues(t, n, st.Jobs)
	require.EqualValues(t, txids, st.Commits)
	require.Less(t, txids, n, "jobs waiting for the lane join the open transaction")
	require.GreaterOrEqual(t, txids, n/runner.GroupMaxBatchDefault, "a commit carries at most MaxBatch jobs")
}

// One job's failure, however it fails, rolls back that job only.
func TestGroup_AFailedJobLeavesTheRestOfItsBatch(t *testing.T) {
	t.Parallel()
	db := groupDB(t)
	g, err := runner.NewGroup(db.Pool, &runner.GroupConfig{Lanes: 2, MaxDelay: 50 * time.Millisecond})
	require.NoError(t, err)
	ctx := context.Background()

	const n = 60
	errs := make([]error, n)
	together(n, func(i int) {
		errs[i] = func() error {
			tx, err := g.Begin(ctx)
			if err != nil {
				return err
			}
			defer tx.Rollback(ctx) //nolint:errcheck
			if _, err := tx.Exec(ctx, `INSERT INTO effects VALUES ($1, txid_current())`, i); err != nil {
				return err
			}
			switch i % 5 {
			case 0: // the job gives up: its caller rolls back
				return errors.New("gave up")
			case 1: // a statement fails and the job ignores it
				_, _ = tx.Exec(ctx, `SELECT 1/0`)
				return tx.Commit(ctx)
			case 2: // a deferred constraint is violated
				if _, err := tx.Exec(ctx, `INSERT INTO deferred VALUES (1)`); err != nil {
					return err
				}
				return tx.Commit(ctx)
			case 3: // a nested savepoint rolls back, the job commits
				sp, err := tx.Begin(ctx)
				if err != nil {
					return err
				}
				if _, err := sp.Exec(ctx, `INSERT INTO effects VALUES ($1, 0)`, 1000+i); err != nil {
					return err
				}
				if err := sp.Rollback(ctx); err != nil {
					return err
				}
				return tx.Commit(ctx)
			}
			return tx.Commit(ctx)
		}()
	})
	deferredOK := 0
	for i, err := range errs {
		switch i % 5 {
		case 0:
			require.EqualError(t, err, "gave up")
		case 1:
			require.ErrorIs(t, err, pgx.ErrTxCommitRollback, "job %d", i)
		case 2:
			if err == nil {
				deferredOK++
			} else {
				require.ErrorContains(t, err, "deferred_k", "job %d", i)
			}
		default:
			require.NoError(t, err, "job %d", i)
		}
	}
	require.Equal(t, 1, deferredOK, "one job inserts the deferred key; the others violate it at once")
	var ids []int
	rows, err := db.Pool.Query(ctx, `SELECT id FROM effects ORDER BY id`)
	require.NoError(t, err)
	ids, err = pgx.CollectRows(rows, pgx.RowTo[int])
	require.NoError(t, err)
	var want []int
	for i := range n {
		if i%5 >= 3 || (i%5 == 2 && errs[i] == nil) {
			want = append(want, i)
		}
	}
	require.Equal(t, want, ids)
	require.Equal(t, 1, count(t, db.Pool, `SELECT count(*) FROM deferred`))
	st := g.Stats()
	require.EqualValues(t, len(want), st.Jobs)
	require.EqualValues(t, n-len(want), st.RolledBack)
}

// The group transaction is lost before its commit: every job of the batch
// gets the error and nothing of theirs is committed.
func TestGroup_LostTransactionFailsTheWholeBatch(t *testing.T) {
	t.Parallel()
	db := groupDB(t)
	g, err := runner.NewGroup(db.Pool, &runner.GroupConfig{Lanes: 1, MaxDelay: 10 * time.Second})
	require.NoError(t, err)
	ctx := context.Background()

	first, err := g.Begin(ctx)
	require.NoError(t, err)
	var pid int
	require.NoError(t, first.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
	_, err = first.Exec(ctx, `INSERT INTO effects VALUES (1, txid_current())`)
	require.NoError(t, err)

	second := make(chan error, 1)
	secondIn := make(chan pgx.Tx, 1)
	go func() {
		tx, err := g.Begin(ctx) // waits for the first job's turn
		if err != nil {
			second <- err
			return
		}
		secondIn <- tx
	}()
	time.Sleep(100 * time.Millisecond)
	firstDone := make(chan error, 1)
	go func() { firstDone <- first.Commit(ctx) }() // another job waits: the batch stays open
	tx2 := <-secondIn
	_, err = tx2.Exec(ctx, `INSERT INTO effects VALUES (2, txid_current())`)
	require.NoError(t, err)

	_, err = db.Pool.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid)
	require.NoError(t, err)
	_, err = tx2.Exec(ctx, `INSERT INTO effects VALUES (3, txid_current())`)
	require.Error(t, err)
	require.Error(t, tx2.Rollback(ctx))
	select {
	case err := <-firstDone:
		require.ErrorContains(t, err, "group transaction lost")
	case err := <-second:
		t.Fatal(err)
	case <-time.After(5 * time.Second):
		t.Fatal("the first job still waits for its lost batch")
	}
	require.Zero(t, count(t, db.Pool, `SELECT count(*) FROM effects`))

	// The lane goes on with a new connection.
	tx, err := g.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO effects VALUES (4, txid_current())`)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, 1, count(t, db.Pool, `SELECT count(*) FROM effects`))
	require.EqualValues(t, 1, g.Stats().Failed)
}

// A job that gives up waiting for its turn leaves the lane working, and a
// batch left open for a job that never joins still commits on its timer.
func TestGroup_GivingUpTheWait(t *testing.T) {
	t.Parallel()
	db := groupDB(t)
	g, err := runner.NewGroup(db.Pool, &runner.GroupConfig{Lanes: 1, MaxDelay: 300 * time.Millisecond})
	require.NoError(t, err)
	ctx := context.Background()

	first, err := g.Begin(ctx)
	require.NoError(t, err)
	_, err = first.Exec(ctx, `INSERT INTO effects VALUES (1, 0)`)
	require.NoError(t, err)

	waitCtx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = g.Begin(waitCtx) // first holds the lane's turn
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// Someone counts as waiting when first commits: the batch stays open
	// for them, and they never come.
	runner.PretendWaiting(g, 0, 1)
	committed := make(chan error, 1)
	go func() { committed <- first.Commit(ctx) }()
	select {
	case err := <-committed:
		t.Fatalf("committed at once (%v): the batch should wait for the job counted as waiting", err)
	case <-time.After(100 * time.Millisecond):
	}
	runner.PretendWaiting(g, 0, -1)
	select {
	case err := <-committed:
		require.NoError(t, err, "the batch's timer commits it")
	case <-time.After(5 * time.Second):
		t.Fatal("the batch was left open")
	}
	require.Equal(t, 1, count(t, db.Pool, `SELECT count(*) FROM effects`))

	// The lane goes on working.
	tx, err := g.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO effects VALUES (2, 0)`)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, 2, count(t, db.Pool, `SELECT count(*) FROM effects`))
}

func TestNewGroup_Validation(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, &testdb.Opts{Empty: true, MaxConns: 8})
	for _, cfg := range []*runner.GroupConfig{
		{Lanes: 8},      // as many lanes as connections
		{MaxBatch: 61},  // past PostgreSQL's subtransaction cache
		{MaxDelay: -1},  // negative
		{Lanes: -1},     // negative
		{MaxBatch: -10}, // negative
	} {
		_, err := runner.NewGroup(db.Pool, cfg)
		require.Error(t, err, "%+v", cfg)
	}
	_, err := runner.NewGroup(db.Pool, nil)
	require.NoError(t, err)
}

// groupOrderWorker is orderWorker over a Group.
type groupOrderWorker struct {
	river.WorkerDefaults[OrderArgs]
	group *runner.Group
	fails atomic.Int64
}

func (w *groupOrderWorker) Work(ctx context.Context, job *river.Job[OrderArgs]) error {
	return runner.WorkTx(ctx, w.group, job, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO order_effects (order_id, job_id) VALUES ($1, $2)`, job.Args.OrderID, job.ID); err != nil {
			return err
		}
		if job.Args.OrderID%7 == 0 && job.Attempt == 1 {
			w.fails.Add(1)
			return fmt.Errorf("order %d: first attempt fails after writing its effect", job.Args.OrderID)
		}
		return nil
	})
}

// Through River: every job completes with its effect exactly once, the
// failed first attempts leave nothing behind, and commits carry many jobs.
func TestGroup_WorkTxThroughRiver(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, &testdb.Opts{MaxConns: 40})
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, `CREATE TABLE order_effects (order_id bigint NOT NULL, job_id bigint NOT NULL, UNIQUE (order_id))`)
	require.NoError(t, err)
	g, err := runner.NewGroup(db.Pool, nil)
	require.NoError(t, err)
	w := &groupOrderWorker{group: g}
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	r, err := runner.New(db.Pool, &runner.Config{Workers: workers, RetryPolicy: &runner.Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond}})
	require.NoError(t, err)

	const n = 700
	params := make([]river.InsertManyParams, n)
	for i := range params {
		params[i] = river.InsertManyParams{Args: OrderArgs{OrderID: int64(i + 1)}}
	}
	_, err = r.Client().InsertMany(ctx, params)
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() { _ = r.Stop(context.Background()) })

	waitFor(t, time.Minute, "every job completed", func() bool {
		return count(t, db.Pool, `SELECT count(*) FROM river_job WHERE state = 'completed'`) == n
	})
	require.Equal(t, n, count(t, db.Pool, `SELECT count(*) FROM order_effects`))
	require.Equal(t, n, count(t, db.Pool, `SELECT count(*) FROM order_effects e JOIN river_job j ON j.id = e.job_id AND j.state = 'completed'`))
	require.EqualValues(t, n/7, w.fails.Load())
	st := g.Stats()
	require.EqualValues(t, n, st.Jobs)
	require.Less(t, st.Commits, st.Jobs)
	t.Logf("group commit: %d jobs in %d commits (%.1f per commit), %d rolled back", st.Jobs, st.Commits, float64(st.Jobs)/float64(st.Commits), st.RolledBack)
}

type groupStolenArgs struct {
	Steal string `json:"steal"` // "before" or "during" the job's transaction
}

func (groupStolenArgs) Kind() string { return "test_group_stolen" }

type groupStolenWorker struct {
	river.WorkerDefaults[groupStolenArgs]
	pool   *pgxpool.Pool
	group  *runner.Group
	ran    atomic.Int64 // fn calls
	result chan error
	steal  chan error
}

func (w *groupStolenWorker) Work(ctx context.Context, job *river.Job[groupStolenArgs]) error {
	steal := func() error {
		// As a rescuer or a shutdown requeue of another process would, with
		// a short lock timeout.
		return pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '300ms'`); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `UPDATE river_job SET state = 'available', attempted_at = now(), scheduled_at = now() + interval '1 hour' WHERE id = $1`, job.ID)
			return err
		})
	}
	if job.Args.Steal == "before" {
		if err := steal(); err != nil {
			return err
		}
	}
	err := runner.WorkTx(ctx, w.group, job, func(ctx context.Context, tx pgx.Tx) error {
		w.ran.Add(1)
		if _, err := tx.Exec(ctx, `INSERT INTO effects VALUES ($1, txid_current())`, job.ID); err != nil {
			return err
		}
		if job.Args.Steal == "during" {
			w.steal <- steal()
		}
		return nil
	})
	w.result <- err
	return err
}

// Through a Group, WorkTx locks the job's row first: a job taken away before
// its transaction starts is not worked (ErrJobNotRunning, fn not called), and
// nobody can take it away while its transaction is open.
func TestGroup_WorkTxLocksTheJob(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, &testdb.Opts{MaxConns: 20})
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, `CREATE TABLE effects (id bigint PRIMARY KEY, txid bigint NOT NULL)`)
	require.NoError(t, err)
	g, err := runner.NewGroup(db.Pool, &runner.GroupConfig{Lanes: 2})
	require.NoError(t, err)
	w := &groupStolenWorker{pool: db.Pool, group: g, result: make(chan error, 2), steal: make(chan error, 1)}
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	r, err := runner.New(db.Pool, &runner.Config{Workers: workers})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() { _ = r.Stop(context.Background()) })
	enqueue := func(steal string) int64 {
		var id int64
		require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			res, err := r.Enqueue(ctx, tx, groupStolenArgs{Steal: steal}, nil)
			if err == nil {
				id = res.JobID
			}
			return err
		}))
		return id
	}
	result := func() error {
		select {
		case err := <-w.result:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("worker did not run")
			return nil
		}
	}

	before := enqueue("before")
	require.ErrorIs(t, result(), runner.ErrJobNotRunning)
	require.Zero(t, w.ran.Load(), "fn must not run for a job that is no longer this run's")
	require.Equal(t, "available", stateOf(t, db.Pool, before), "the job stays with whoever took it")

	during := enqueue("during")
	select {
	case err := <-w.steal:
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr, "the job's row is locked while its transaction is open")
		require.Equal(t, "55P03", pgErr.Code, "lock_not_available")
	case <-time.After(10 * time.Second):
		t.Fatal("fn did not run")
	}
	require.NoError(t, result())
	require.Equal(t, "completed", stateOf(t, db.Pool, during))
	require.Equal(t, 1, count(t, db.Pool, `SELECT count(*) FROM effects WHERE id = $1`, during))
	require.Equal(t, 1, count(t, db.Pool, `SELECT count(*) FROM river_job WHERE id = $1 AND finalized_at IS NOT NULL`, during))
	require.Zero(t, count(t, db.Pool, `SELECT count(*) FROM effects WHERE id = $1`, before))
}
