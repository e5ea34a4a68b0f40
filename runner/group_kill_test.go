package runner_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/runner"
)

// Backends killed at random (every 40 ms for 6 s) while a group commits jobs:
// every job's effect exactly once, every job completed.
func TestGroup_ConnectionKills(t *testing.T) {
	db := testdb.New(t, &testdb.Opts{MaxConns: 40})
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, `CREATE TABLE order_effects (order_id bigint NOT NULL, job_id bigint NOT NULL, UNIQUE (order_id))`)
	require.NoError(t, err)
	g, err := runner.NewGroup(db.Pool, &runner.GroupConfig{Lanes: 4})
	require.NoError(t, err)
	w := &groupOrderWorker{group: g}
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	r, err := runner.New(db.Pool, &runner.Config{Workers: workers, RetryPolicy: &runner.Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond}, Logger: nil})
	require.NoError(t, err)
	const n = 3000
	params := make([]river.InsertManyParams, n)
	for i := range params {
		params[i] = river.InsertManyParams{Args: OrderArgs{OrderID: int64(i + 1)}}
	}
	_, err = r.Client().InsertMany(ctx, params)
	require.NoError(t, err)

	admin, err := pgx.Connect(ctx, db.URL)
	require.NoError(t, err)
	defer admin.Close(ctx)
	stop := make(chan struct{})
	var kills atomic.Int64
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(40 * time.Millisecond):
			}
			var k int64
			_ = admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity
				WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle' ORDER BY random() LIMIT 1) s`).Scan(&k)
			kills.Add(k)
		}
	}()
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() { _ = r.Stop(context.Background()) })
	time.Sleep(6 * time.Second)
	close(stop)
	waitFor(t, 3*time.Minute, "every job finished", func() bool {
		return count(t, db.Pool, `SELECT count(*) FROM river_job WHERE state IN ('completed','discarded','cancelled')`) == n
	})
	st := g.Stats()
	t.Logf("kills=%d group=%+v", kills.Load(), st)
	rows, _ := db.Pool.Query(ctx, `SELECT state::text || '=' || count(*) FROM river_job GROUP BY state`)
	s, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	t.Logf("states %v", s)
	require.Equal(t, n, count(t, db.Pool, `SELECT count(*) FROM river_job WHERE state = 'completed'`))
	require.Equal(t, n, count(t, db.Pool, `SELECT count(*) FROM order_effects`))
	require.Equal(t, n, count(t, db.Pool, `SELECT count(*) FROM order_effects e JOIN river_job j ON j.id = e.job_id AND j.state = 'completed'`))
}
