package jobs_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/datasync"
	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/runner"
)

type syncFixture struct {
	dest   *testdb.DB
	src    *testdb.DB
	runner *runner.Runner
}

type syncOpts struct {
	sources    func(pg *datasync.PostgresSource) map[string]datasync.Source
	pageSize   int
	clock      rivertype.TimeGenerator
	queues     map[string]river.QueueConfig
	insertOnly bool
	retry      *runner.Backoff
}

func setupSync(t *testing.T, o *syncOpts) *syncFixture {
	t.Helper()
	if o == nil {
		o = &syncOpts{}
	}
	ctx := context.Background()
	src := testdb.New(t, &testdb.Opts{Empty: true})
	ddl, err := datasync.TrackingSQL("items")
	require.NoError(t, err)
	_, err = src.Pool.Exec(ctx, `CREATE TABLE items (id text PRIMARY KEY, name text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());`+ddl)
	require.NoError(t, err)
	pg, err := datasync.NewPostgresSource(src.Pool, "items")
	require.NoError(t, err)
	sources := map[string]datasync.Source{"items": pg}
	if o.sources != nil {
		sources = o.sources(pg)
	}
	dest := testdb.New(t, &testdb.Opts{MaxConns: 40})
	workers := river.NewWorkers()
	pageSize := o.pageSize
	if pageSize == 0 {
		pageSize = 50
	}
	river.AddWorker(workers, &jobs.SyncWorker{Pool: dest.Pool, Sources: sources, PageSize: pageSize})
	queues := o.queues
	if queues == nil {
		queues = jobs.Queues(nil)
	}
	retry := o.retry
	if retry == nil {
		retry = &runner.Backoff{Min: 20 * time.Millisecond, Max: 100 * time.Millisecond}
	}
	cfg := &runner.Config{Workers: workers, Queues: queues, Logger: warnLogger, Clock: o.clock, InsertOnly: o.insertOnly,
		FetchPollInterval: 50 * time.Millisecond, RetryPolicy: retry}
	r, err := runner.New(dest.Pool, cfg)
	require.NoError(t, err)
	return &syncFixture{dest: dest, src: src, runner: r}
}

func (f *syncFixture) start(t *testing.T) {
	t.Helper()
	require.NoError(t, f.runner.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = f.runner.Stop(ctx)
	})
}

func (f *syncFixture) enqueue(t *testing.T, source string, trigger jobs.SyncTrigger, opts *jobs.SyncOpts) *runner.EnqueueResult {
	t.Helper()
	var res *runner.EnqueueResult
	ctx := context.Background()
	require.NoError(t, pgx.BeginFunc(ctx, f.dest.Pool, func(tx pgx.Tx) error {
		var err error
		res, err = jobs.EnqueueSync(ctx, f.runner, tx, source, trigger, opts)
		return err
	}))
	return res
}

func (f *syncFixture) waitJob(t *testing.T, id int64, state string) {
	t.Helper()
	waitFor(t, 20*time.Second, fmt.Sprintf("sync job %d %s", id, state), func() bool {
		var s string
		_ = f.dest.Pool.QueryRow(context.Background(), `SELECT state::text FROM river_job WHERE id = $1`, id).Scan(&s)
		return s == state
	})
}

func (f *syncFixture) requireInSync(t *testing.T, source string) {
	t.Helper()
	ctx := context.Background()
	var srcRows, matching, destRows int
	require.NoError(t, f.src.Pool.QueryRow(ctx, `SELECT count(*) FROM items`).Scan(&srcRows))
	require.NoError(t, f.dest.Pool.QueryRow(ctx, `SELECT count(*) FROM data_records WHERE source = $1`, source).Scan(&destRows))
	rows, err := f.src.Pool.Query(ctx, `SELECT id, version, name FROM items`)
	require.NoError(t, err)
	want := map[string]string{}
	for rows.Next() {
		var id, name string
		var v int64
		require.NoError(t, rows.Scan(&id, &v, &name))
		want[id] = fmt.Sprintf("%d/%s", v, name)
	}
	require.NoError(t, rows.Err())
	rows, err = f.dest.Pool.Query(ctx, `SELECT record_id, version, data->>'name' FROM data_records WHERE source = $1`, source)
	require.NoError(t, err)
	for rows.Next() {
		var id, name string
		var v int64
		require.NoError(t, rows.Scan(&id, &v, &name))
		if want[id] == fmt.Sprintf("%d/%s", v, name) {
			matching++
		}
	}
	require.NoError(t, rows.Err())
	require.Equal(t, srcRows, destRows)
	require.Equal(t, srcRows, matching)
}

func (f *syncFixture) cursor(t *testing.T, source string) *datasync.Cursor {
	t.Helper()
	c, err := datasync.Status(context.Background(), f.dest.Pool, source)
	require.NoError(t, err)
	return c
}

func TestSync_EndToEnd(t *testing.T) {
	t.Parallel()
	f := setupSync(t, nil)
	ctx := context.Background()
	_, err := f.src.Pool.Exec(ctx, `INSERT INTO items (id, name) SELECT 'r' || g, 'n' || g FROM generate_series(1, 260) g`)
	require.NoError(t, err)
	f.start(t)
	res := f.enqueue(t, "items", jobs.SyncTrigger{By: "test"}, nil)
	require.False(t, res.Duplicate)
	// A second request while the first is pending is the same sync.
	again := f.enqueue(t, "items", jobs.SyncTrigger{By: "someone else"}, nil)
	require.True(t, again.Duplicate)
	require.Equal(t, res.JobID, again.JobID)
	f.waitJob(t, res.JobID, "completed")
	f.requireInSync(t, "items")
	c := f.cursor(t, "items")
	require.EqualValues(t, 6, c.Pages)
	require.EqualValues(t, 260, c.RowsApplied)
	require.NotNil(t, c.CaughtUpTo)

	// SC-2 for the sync: after completion, a sync may run again.
	_, err = f.src.Pool.Exec(ctx, `UPDATE items SET name = 'changed' WHERE id = 'r7'`)
	require.NoError(t, err)
	next := f.enqueue(t, "items", jobs.SyncTrigger{}, nil)
	require.False(t, next.Duplicate)
	f.waitJob(t, next.JobID, "completed")
	f.requireInSync(t, "items")
	require.EqualValues(t, 261, f.cursor(t, "items").RowsApplied)
}

// A writer that keeps changing the source, with transactions that take their
// timestamp early and commit late, while syncs run: after the writer stops
// and a last sync runs, source and destination are equal.
func TestSync_ConcurrentWriter(t *testing.T) {
	t.Parallel()
	f := setupSync(t, &syncOpts{pageSize: 20})
	ctx := context.Background()
	f.start(t)
	stop := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		var err error
		for i := 0; err == nil; i++ {
			select {
			case <-stop:
				writerDone <- nil
				return
			default:
			}
			err = pgx.BeginFunc(ctx, f.src.Pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO items (id, name) SELECT 'w' || $1::int || '-' || g, 'v' FROM generate_series(1, 5) g`, i); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `UPDATE items SET name = 'u' || $1::int WHERE id IN (SELECT id FROM items ORDER BY random() LIMIT 3)`, i); err != nil {
					return err
				}
				if i%4 == 0 {
					time.Sleep(30 * time.Millisecond) // a late commit
				}
				return nil
			})
		}
		writerDone <- err
	}()
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		f.enqueue(t, "items", jobs.SyncTrigger{}, nil)
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	require.NoError(t, <-writerDone)
	last := f.enqueue(t, "items", jobs.SyncTrigger{}, nil)
	f.waitJob(t, last.JobID, "completed")
	if last.Duplicate {
		// It joined a sync that started before the writer stopped: run one more.
		last = f.enqueue(t, "items", jobs.SyncTrigger{}, nil)
		f.waitJob(t, last.JobID, "completed")
	}
	f.requireInSync(t, "items")
}

// A crash after a page's upserts but before its commit (the connection dies
// as the cursor moves): after the retry the page is applied exactly once.
func TestSync_CrashBeforeCommit(t *testing.T) {
	t.Parallel()
	f := setupSync(t, nil)
	ctx := context.Background()
	_, err := f.src.Pool.Exec(ctx, `INSERT INTO items (id, name) SELECT 'r' || g, 'n' || g FROM generate_series(1, 30) g`)
	require.NoError(t, err)
	// The connection dies once, as the first page's cursor moves (after its
	// upserts). A sequence counts the crossings: it is not rolled back.
	_, err = f.dest.Pool.Exec(ctx, `
		CREATE SEQUENCE crossings;
		CREATE FUNCTION crash_once() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.pages > OLD.pages AND nextval('crossings') = 1 THEN
				PERFORM pg_terminate_backend(pg_backend_pid());
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER crash_once BEFORE UPDATE ON sync_cursors FOR EACH ROW EXECUTE FUNCTION crash_once();`)
	require.NoError(t, err)
	f.start(t)
	res := f.enqueue(t, "items", jobs.SyncTrigger{}, nil)
	f.waitJob(t, res.JobID, "completed")
	var crossings int
	require.NoError(t, f.dest.Pool.QueryRow(ctx, `SELECT last_value FROM crossings`).Scan(&crossings))
	require.GreaterOrEqual(t, crossings, 2, "the first attempt died, the retry went through")
	f.requireInSync(t, "items")
	c := f.cursor(t, "items")
	require.EqualValues(t, 30, c.RowsApplied, "applied exactly once")
	require.Zero(t, c.RowsUnchanged, "the crashed attempt wrote nothing")
}

// badFeed serves one bad page (or error) per request kind.
func badFeed(t *testing.T, kind string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch kind {
		case "http500":
			http.Error(w, "feed broken", http.StatusInternalServerError)
		case "timeout":
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		case "invalid json":
			fmt.Fprint(w, `{"changes":[{"id":"a","version":1,"data":{}}`)
		case "missing id":
			fmt.Fprint(w, `{"changes":[{"id":"a","version":1,"data":{"ok":true}},{"version":1,"data":{}}],"next_cursor":"2","has_more":false}`)
		case "bad version":
			fmt.Fprint(w, `{"changes":[{"id":"a","version":1,"data":{}},{"id":"b","version":0,"data":{}}],"next_cursor":"2","has_more":false}`)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// Bad source data: the sync fails with a recorded error, the cursor does not
// move, and nothing of the page is written (not even its good changes).
func TestSync_BadSourceData(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"http500", "timeout", "invalid json", "missing id", "bad version"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			url := badFeed(t, kind)
			f := setupSync(t, &syncOpts{sources: func(*datasync.PostgresSource) map[string]datasync.Source {
				src, err := datasync.NewHTTPSource(url, &datasync.HTTPSourceOpts{Timeout: 200 * time.Millisecond})
				require.NoError(t, err)
				return map[string]datasync.Source{"feed": src}
			}})
			f.start(t)
			res := f.enqueue(t, "feed", jobs.SyncTrigger{}, nil)
			waitFor(t, 10*time.Second, "an error recorded", func() bool {
				c, err := datasync.Status(context.Background(), f.dest.Pool, "feed")
				return err == nil && c.LastError != nil
			})
			c := f.cursor(t, "feed")
			require.Empty(t, c.Cursor, "the cursor did not move")
			require.Zero(t, c.Pages)
			var records int
			require.NoError(t, f.dest.Pool.QueryRow(context.Background(), `SELECT count(*) FROM data_records`).Scan(&records))
			require.Zero(t, records)
			var state string
			require.NoError(t, f.dest.Pool.QueryRow(context.Background(), `SELECT state::text FROM river_job WHERE id = $1`, res.JobID).Scan(&state))
			require.Contains(t, []string{"retryable", "available", "running"}, state, "retried, not lost")
		})
	}
}

// skewedClock is an application clock that is off by a fixed amount.
type skewedClock struct{ skew time.Duration }

func (c *skewedClock) Now() time.Time       { return time.Now().Add(c.skew) }
func (c *skewedClock) NowOrNil() *time.Time { now := c.Now(); return &now }

// SC-4: syncs deduplicated by a 12-minute period: two scheduled 30 minutes
// apart are two jobs; two scheduled 1 minute apart (in one window) are one.
// Without a scheduled time the window comes from the database clock: servers
// whose clocks are minutes apart still share it.
func TestSync_SC4_UniqueByPeriod(t *testing.T) {
	t.Parallel()
	const period = 12 * time.Minute
	f := setupSync(t, &syncOpts{insertOnly: true})
	ctx := context.Background()
	base := time.Now().UTC().Truncate(period).Add(time.Hour) // the start of a future window
	a := f.enqueue(t, "items", jobs.SyncTrigger{}, &jobs.SyncOpts{Period: period, ScheduledAt: base})
	b := f.enqueue(t, "items", jobs.SyncTrigger{}, &jobs.SyncOpts{Period: period, ScheduledAt: base.Add(30 * time.Minute)})
	require.False(t, a.Duplicate)
	require.False(t, b.Duplicate)
	c := f.enqueue(t, "other", jobs.SyncTrigger{}, &jobs.SyncOpts{Period: period, ScheduledAt: base.Add(2 * time.Minute)})
	d := f.enqueue(t, "other", jobs.SyncTrigger{}, &jobs.SyncOpts{Period: period, ScheduledAt: base.Add(3 * time.Minute)})
	require.False(t, c.Duplicate)
	require.True(t, d.Duplicate)
	require.Equal(t, c.JobID, d.JobID)

	// Two application servers, one 5 minutes behind and one 5 minutes ahead.
	enqueueWithClock := func(skew time.Duration) *runner.EnqueueResult {
		workers := river.NewWorkers()
		r, err := runner.New(f.dest.Pool, &runner.Config{InsertOnly: true, Workers: workers, Clock: &skewedClock{skew}, Logger: warnLogger})
		require.NoError(t, err)
		var res *runner.EnqueueResult
		require.NoError(t, pgx.BeginFunc(ctx, f.dest.Pool, func(tx pgx.Tx) error {
			var err error
			res, err = jobs.EnqueueSync(ctx, r, tx, "skewed", jobs.SyncTrigger{}, &jobs.SyncOpts{Period: period})
			return err
		}))
		return res
	}
	// Stay clear of a window boundary (by the database clock) so that the
	// test does not straddle two windows.
	for {
		var now time.Time
		require.NoError(t, f.dest.Pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&now))
		if now.Sub(now.Truncate(period)) < period-time.Minute {
			break
		}
		time.Sleep(time.Second)
	}
	behind := enqueueWithClock(-5 * time.Minute)
	ahead := enqueueWithClock(5 * time.Minute)
	require.False(t, behind.Duplicate)
	require.True(t, ahead.Duplicate, "one window, by the database clock")
	require.Equal(t, behind.JobID, ahead.JobID)
}

// SC-5 for the sync: the unique key covers only Source; a difference in the
// nested Trigger (unmarked) is the same sync, another source is another;
// the same args in another queue are the same sync (unique across queues).
func TestSync_SC5_UniqueFields(t *testing.T) {
	t.Parallel()
	f := setupSync(t, &syncOpts{insertOnly: true})
	ctx := context.Background()
	a := f.enqueue(t, "items", jobs.SyncTrigger{By: "api:a", RequestID: "1"}, nil)
	b := f.enqueue(t, "items", jobs.SyncTrigger{By: "api:b", RequestID: "2"}, nil)
	require.True(t, b.Duplicate)
	require.Equal(t, a.JobID, b.JobID)
	c := f.enqueue(t, "other", jobs.SyncTrigger{By: "api:a", RequestID: "1"}, nil)
	require.False(t, c.Duplicate)
	var d *runner.EnqueueResult
	require.NoError(t, pgx.BeginFunc(ctx, f.dest.Pool, func(tx pgx.Tx) error {
		var err error
		d, err = f.runner.Enqueue(ctx, tx, jobs.SyncArgs{Source: "items"}, &river.InsertOpts{Queue: river.QueueDefault})
		return err
	}))
	require.True(t, d.Duplicate)
	require.Equal(t, a.JobID, d.JobID)
}

// flakySource fails its first call, then delegates.
type flakySource struct {
	next  datasync.Source
	calls atomic.Int64
}

func (s *flakySource) Changes(ctx context.Context, cursor string, limit int) (*datasync.Page, error) {
	if s.calls.Add(1) == 1 {
		return nil, fmt.Errorf("source unreachable (injected)")
	}
	return s.next.Changes(ctx, cursor, limit)
}

// SC-6: a sync fails and records its progress in metadata on the way to its
// retry; the original args are enqueued again meanwhile: a duplicate, the
// unique key as it was at first insert, and one run at a time.
func TestSync_SC6_KeyFixedAtFirstInsert(t *testing.T) {
	t.Parallel()
	var flaky *flakySource
	f := setupSync(t, &syncOpts{
		sources: func(pg *datasync.PostgresSource) map[string]datasync.Source {
			flaky = &flakySource{next: pg}
			return map[string]datasync.Source{"items": flaky}
		},
		// The retry waits, so that the duplicate arrives while it is due.
		retry: &runner.Backoff{Min: time.Hour, Max: time.Hour},
	})
	ctx := context.Background()
	_, err := f.src.Pool.Exec(ctx, `INSERT INTO items (id, name) SELECT 'r' || g, 'n' FROM generate_series(1, 10) g`)
	require.NoError(t, err)
	first := f.enqueue(t, "items", jobs.SyncTrigger{By: "first"}, nil)
	var keyBefore []byte
	require.NoError(t, f.dest.Pool.QueryRow(ctx, `SELECT unique_key FROM river_job WHERE id = $1`, first.JobID).Scan(&keyBefore))
	f.start(t)
	waitFor(t, 10*time.Second, "the first attempt to fail", func() bool { return flaky.calls.Load() >= 1 })
	var meta []byte
	waitFor(t, 10*time.Second, "progress in metadata", func() bool {
		_ = f.dest.Pool.QueryRow(ctx, `SELECT metadata FROM river_job WHERE id = $1`, first.JobID).Scan(&meta)
		return len(meta) > 0 && string(meta) != "{}"
	})
	require.Contains(t, string(meta), `"sync"`)

	again := f.enqueue(t, "items", jobs.SyncTrigger{By: "second"}, nil)
	require.True(t, again.Duplicate)
	require.Equal(t, first.JobID, again.JobID)
	var keyAfter []byte
	require.NoError(t, f.dest.Pool.QueryRow(ctx, `SELECT unique_key FROM river_job WHERE id = $1`, first.JobID).Scan(&keyAfter))
	require.Equal(t, keyBefore, keyAfter)

	_, err = f.runner.RetryJob(ctx, first.JobID)
	require.NoError(t, err)
	f.waitJob(t, first.JobID, "completed")
	f.requireInSync(t, "items")
	var syncJobs int
	require.NoError(t, f.dest.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = 'sync_data'`).Scan(&syncJobs))
	require.Equal(t, 1, syncJobs)
}

// blockingSource never answers until its context ends; stubborn ones do not
// even then, like a call stuck without a timeout.
type blockingSource struct {
	stubborn bool
	release  chan struct{}
	started  *atomic.Int64
}

func (s *blockingSource) Changes(ctx context.Context, _ string, _ int) (*datasync.Page, error) {
	s.started.Add(1)
	if s.stubborn {
		<-s.release
		return nil, fmt.Errorf("released")
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// SC-8 for syncs: 20 long syncs are running, half of them ignore
// cancellation; a stop with a 10 s budget; a new process. Every job is back
// in the queue within the budget, no attempt used, none discarded (max
// attempts 1 included), and the new process completes each once.
func TestSync_SC8_Shutdown(t *testing.T) {
	t.Parallel()
	const n = 20
	ctx := context.Background()
	release := make(chan struct{})
	var started atomic.Int64
	names := make([]string, n)
	blocking := map[string]datasync.Source{}
	for i := range n {
		names[i] = fmt.Sprintf("s%02d", i)
		blocking[names[i]] = &blockingSource{stubborn: i%2 == 0, release: release, started: &started}
	}
	f := setupSync(t, &syncOpts{
		sources: func(*datasync.PostgresSource) map[string]datasync.Source { return blocking },
		queues:  map[string]river.QueueConfig{jobs.QueueSync: {MaxWorkers: n}},
	})
	defer close(release)
	require.NoError(t, f.runner.Start(ctx))
	ids := make([]int64, n)
	for i, name := range names {
		var res *runner.EnqueueResult
		require.NoError(t, pgx.BeginFunc(ctx, f.dest.Pool, func(tx pgx.Tx) error {
			var err error
			res, err = f.runner.Enqueue(ctx, tx, jobs.SyncArgs{Source: name}, &river.InsertOpts{MaxAttempts: 1})
			return err
		}))
		ids[i] = res.JobID
	}
	waitFor(t, 10*time.Second, "all syncs running", func() bool { return started.Load() == n })

	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	_ = f.runner.Stop(stopCtx)
	require.LessOrEqual(t, time.Since(start), 11*time.Second)
	var running, lost, burned int
	require.NoError(t, f.dest.Pool.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE state = 'running'),
		       count(*) FILTER (WHERE state IN ('discarded', 'cancelled')),
		       count(*) FILTER (WHERE attempt > 0)
		FROM river_job WHERE kind = 'sync_data'`).Scan(&running, &lost, &burned))
	require.Zero(t, running)
	require.Zero(t, lost)
	require.Zero(t, burned)

	// A new process whose sources answer.
	_, err := f.src.Pool.Exec(ctx, `INSERT INTO items (id, name) VALUES ('only', 'row')`)
	require.NoError(t, err)
	pg, err := datasync.NewPostgresSource(f.src.Pool, "items")
	require.NoError(t, err)
	healthy := map[string]datasync.Source{}
	for _, name := range names {
		healthy[name] = pg
	}
	workers := river.NewWorkers()
	river.AddWorker(workers, &jobs.SyncWorker{Pool: f.dest.Pool, Sources: healthy})
	r2, err := runner.New(f.dest.Pool, &runner.Config{Workers: workers, Queues: jobs.Queues(nil), Logger: warnLogger, FetchPollInterval: 50 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, r2.Start(ctx))
	defer r2.Stop(ctx) //nolint:errcheck
	for _, id := range ids {
		f.waitJob(t, id, "completed")
	}
	var applied int64
	require.NoError(t, f.dest.Pool.QueryRow(ctx, `SELECT sum(rows_applied) FROM sync_cursors`).Scan(&applied))
	require.EqualValues(t, n, applied, "each sync applied its row once")
}

// Periodic syncs are asked for by the leader on a schedule (and at start).
func TestSync_Periodic(t *testing.T) {
	t.Parallel()
	f := setupSync(t, nil)
	ctx := context.Background()
	workers := river.NewWorkers()
	pg, err := datasync.NewPostgresSource(f.src.Pool, "items")
	require.NoError(t, err)
	river.AddWorker(workers, &jobs.SyncWorker{Pool: f.dest.Pool, Sources: map[string]datasync.Source{"items": pg}})
	r, err := runner.New(f.dest.Pool, &runner.Config{Workers: workers, Queues: jobs.Queues(nil), Logger: warnLogger,
		PeriodicJobs: []*river.PeriodicJob{jobs.PeriodicSync("items", time.Hour)}})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	defer r.Stop(ctx) //nolint:errcheck
	waitFor(t, 20*time.Second, "a scheduled sync completed", func() bool {
		var n int
		_ = f.dest.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = 'sync_data' AND state = 'completed' AND args->'trigger'->>'by' = 'schedule'`).Scan(&n)
		return n == 1
	})
}
