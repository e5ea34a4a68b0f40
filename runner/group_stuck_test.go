package runner_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/runner"
)

var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

type stuckArgs struct{ N int }

func (stuckArgs) Kind() string { return "test_group_stuck" }

// stuckWorker's job 0 runs sql in its group transaction (a lock wait, a long
// statement); the others insert their row.
type stuckWorker struct {
	river.WorkerDefaults[stuckArgs]
	db      runner.Beginner
	sql     string
	once    sync.Once
	started chan struct{}
}

func (w *stuckWorker) Work(ctx context.Context, job *river.Job[stuckArgs]) error {
	return runner.WorkTx(ctx, w.db, job, func(ctx context.Context, tx pgx.Tx) error {
		if job.Args.N == 0 {
			w.once.Do(func() { close(w.started) })
			_, err := tx.Exec(ctx, w.sql)
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO quick_effects VALUES ($1)`, job.Args.N)
		return err
	})
}

func stuckSetup(t *testing.T, sql string, queues map[string]river.QueueConfig) (*testdb.DB, *runner.Runner, *runner.Group, *stuckWorker, pgx.Tx) {
	t.Helper()
	ctx := context.Background()
	db := testdb.New(t, &testdb.Opts{MaxConns: 20})
	_, err := db.Pool.Exec(ctx, `CREATE TABLE blocker (id int PRIMARY KEY); INSERT INTO blocker VALUES (1);
		CREATE TABLE quick_effects (n int PRIMARY KEY)`)
	require.NoError(t, err)
	holder, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = holder.Rollback(context.Background()) })
	_, err = holder.Exec(ctx, `SELECT 1 FROM blocker WHERE id = 1 FOR UPDATE`)
	require.NoError(t, err)

	g, err := runner.NewGroup(db.Pool, &runner.GroupConfig{Lanes: 1})
	require.NoError(t, err)
	w := &stuckWorker{db: g, sql: sql, started: make(chan struct{})}
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	r, err := runner.New(db.Pool, &runner.Config{Workers: workers, Groups: []*runner.Group{g}, Queues: queues, Logger: quietLogger})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	return db, r, g, w, holder
}

func enqueueStuck(t *testing.T, db *testdb.DB, r *runner.Runner, n int) int64 {
	t.Helper()
	var id int64
	require.NoError(t, pgx.BeginFunc(context.Background(), db.Pool, func(tx pgx.Tx) error {
		res, err := r.Enqueue(context.Background(), tx, stuckArgs{N: n}, nil)
		if err == nil {
			id = res.JobID
		}
		return err
	}))
	return id
}

// SC-8 with group commit: a job stuck in its group transaction, waiting on a
// lock or in a long statement that its cancellation cannot interrupt, is back
// in the queue within the shutdown budget, its attempt given back.
func TestGroup_StopRequeuesStuckJobs(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, sql string }{
		{"lock wait", `SELECT 1 FROM blocker WHERE id = 1 FOR UPDATE`},
		{"long statement", `SELECT pg_sleep(25)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			db, r, _, w, _ := stuckSetup(t, c.sql, nil)
			id := enqueueStuck(t, db, r, 0)
			<-w.started
			waitFor(t, 10*time.Second, "the statement to run", func() bool {
				return count(t, db.Pool, `SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'`, c.sql) == 1
			})

			const budget = 3 * time.Second
			stopCtx, cancel := context.WithTimeout(context.Background(), budget)
			defer cancel()
			start := time.Now()
			_ = r.Stop(stopCtx)
			require.Less(t, time.Since(start), budget+2*time.Second, "Stop overran its budget (by far more than scheduling noise)")
			var state string
			var attempt int
			require.NoError(t, db.Pool.QueryRow(context.Background(), `SELECT state, attempt FROM river_job WHERE id = $1`, id).Scan(&state, &attempt))
			require.Equal(t, "available", state)
			require.Zero(t, attempt, "shutdown burnt an attempt")
		})
	}
}

// A job waiting on a lock in its group transaction leaves the group after the
// lock timeout: the jobs of its lane go on meanwhile, and it runs again in a
// transaction of its own, completing once the lock is free, on its first
// attempt.
func TestGroup_ALockWaitLeavesTheLane(t *testing.T) {
	t.Parallel()
	db, r, g, w, holder := stuckSetup(t, `SELECT 1 FROM blocker WHERE id = 1 FOR UPDATE`, nil)
	t.Cleanup(func() { _ = r.Stop(context.Background()) })
	blocked := enqueueStuck(t, db, r, 0)
	<-w.started
	for i := 1; i <= 20; i++ {
		enqueueStuck(t, db, r, i)
	}
	waitFor(t, 20*time.Second, "the lane's other jobs to complete while the lock is held", func() bool {
		return count(t, db.Pool, `SELECT count(*) FROM quick_effects`) == 20
	})
	require.Equal(t, 1, count(t, db.Pool, `SELECT count(*) FROM river_job WHERE id = $1 AND state = 'running'`, blocked))
	require.Positive(t, g.Stats().OutOfGroup)

	require.NoError(t, holder.Rollback(context.Background()))
	waitFor(t, 20*time.Second, "the blocked job to complete", func() bool {
		return count(t, db.Pool, `SELECT count(*) FROM river_job WHERE id = $1 AND state = 'completed' AND attempt = 1`, blocked) == 1
	})
}

// A job that changes settings (SET LOCAL, SET CONSTRAINTS) changes them for
// itself only: the jobs after it in the group run with the group's own.
func TestGroup_SettingsStayWithTheirJob(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, set, job1 string
		job1Fails       bool
	}{
		// Job 1's own deferred violation fails job 1 alone, at its commit.
		{"deferred constraints", `SET CONSTRAINTS ALL DEFERRED`, `INSERT INTO deferred VALUES (7), (7)`, true},
		{"statement_timeout", `SET LOCAL statement_timeout = 1`, `INSERT INTO public.effects VALUES (1, 1)`, false},
		{"search_path", `SET LOCAL search_path = pg_catalog`, `INSERT INTO public.effects VALUES (1, 1)`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			db := groupDB(t)
			g, err := runner.NewGroup(db.Pool, &runner.GroupConfig{Lanes: 1, MaxDelay: time.Second})
			require.NoError(t, err)
			ctx := context.Background()
			tx1, err := g.Begin(ctx)
			require.NoError(t, err)
			_, err = tx1.Exec(ctx, c.set)
			require.NoError(t, err)
			_, err = tx1.Exec(ctx, c.job1)
			require.NoError(t, err)

			// Job 2 waits for the lane while job 1 holds it.
			got2 := make(chan pgx.Tx, 1)
			go func() {
				tx, err := g.Begin(ctx)
				if err != nil {
					tx = nil
				}
				got2 <- tx
			}()
			waitFor(t, 5*time.Second, "job 2 to wait for the lane", func() bool { return runner.Waiting(g, 0) == 2 })
			done1 := make(chan error, 1)
			go func() { done1 <- tx1.Commit(ctx) }()
			tx2 := <-got2
			require.NotNil(t, tx2)
			_, err = tx2.Exec(ctx, `SELECT pg_sleep(0.05)`)
			require.NoError(t, err, "job 2 ran with job 1's statement_timeout")
			_, err = tx2.Exec(ctx, `INSERT INTO effects VALUES (2, 2)`)
			require.NoError(t, err, "job 2 ran with job 1's search_path")
			require.NoError(t, tx2.Commit(ctx))

			err1 := <-done1
			if c.job1Fails {
				require.Error(t, err1)
				require.Equal(t, 0, count(t, db.Pool, `SELECT count(*) FROM deferred`))
				require.Equal(t, 1, count(t, db.Pool, `SELECT count(*) FROM effects`))
			} else {
				require.NoError(t, err1)
				require.Equal(t, 2, count(t, db.Pool, `SELECT count(*) FROM effects`))
			}

			// A deferrable constraint is checked per statement in a group,
			// whatever a job before set.
			tx3, err := g.Begin(ctx)
			require.NoError(t, err)
			_, err = tx3.Exec(ctx, `INSERT INTO deferred VALUES (8), (8)`)
			require.Error(t, err)
			require.NoError(t, tx3.Rollback(ctx))
		})
	}
}

func TestChangesSettings(t *testing.T) {
	t.Parallel()
	for sql, want := range map[string]bool{
		`SET LOCAL statement_timeout = 1`:                      true,
		"  set constraints all deferred":                       true,
		"(SET\tsearch_path = x)":                               true,
		`RESET ALL`:                                            true,
		`SELECT SET_CONFIG('search_path', 'x', true)`:          true,
		`INSERT INTO t VALUES (1); SET LOCAL work_mem = '1GB'`: true,
		`UPDATE t SET x = 1 WHERE id = $1`:                     false,
		`SELECT settings, reset_at FROM t`:                     false,
		`INSERT INTO effects VALUES ($1, $2)`:                  false,
	} {
		require.Equal(t, want, runner.ChangesSettings(sql), sql)
	}
}
