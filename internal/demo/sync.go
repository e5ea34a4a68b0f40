package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/pgonce/pgonce/api"
	"github.com/pgonce/pgonce/datasync"
	"github.com/pgonce/pgonce/internal/problem"
	"github.com/pgonce/pgonce/internal/progress"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/runner"
)

// SourceTable is the demo's source table.
const SourceTable = "demo_items"

// SetupSourceTable creates the demo source table (tracked for syncing) in
// the database of pool, replacing one left by an earlier run.
func SetupSourceTable(ctx context.Context, pool *pgxpool.Pool) error {
	ddl, err := datasync.TrackingSQL(SourceTable)
	if err != nil {
		return err
	}
	_, err = pool.Exec(ctx, `
		DROP TABLE IF EXISTS `+SourceTable+`;
		CREATE TABLE `+SourceTable+` (
			id text PRIMARY KEY,
			name text NOT NULL,
			amount integer NOT NULL DEFAULT 0,
			updated_at timestamptz NOT NULL DEFAULT now()
		);`+ddl)
	return err
}

// Sync is the data-sync workload: writers keep changing the source table
// (inserts, updates, transactions that commit late, rolled-back ones, many
// rows sharing a timestamp) while clients ask for syncs over HTTP and the
// sync workers are restarted; then the writers stop, a last sync runs, and
// the audit compares source and destination row by row.
type Sync struct {
	// BaseURL is where requests go, unless Targets is set (see Signups).
	BaseURL string
	Targets func() string
	Token   string
	Name    string // the source's name (SYNC_SOURCES)
	Source  *pgxpool.Pool
	Dest    *pgxpool.Pool
	// Src is the source as the workers read it.
	Src datasync.Source

	// Bulk rows are written before the writers start and synced alone, to
	// measure the sync rate. Defaults to 20,000.
	Bulk int
	// Duration of the concurrent writing. Defaults to 8 s.
	Duration time.Duration
	// Writers writing at once. Defaults to 4.
	Writers int
	// RestartEvery restarts the sync workers this often. Defaults to 1.5 s.
	RestartEvery time.Duration
	// ExternalWorkers leaves the syncs to runners outside this workload
	// (the chaos run's processes): no workers of its own, no restarts.
	ExternalWorkers bool
	// PageSize of a sync page. Defaults to 200.
	PageSize int

	Logger   *slog.Logger
	Progress io.Writer
	Client   *http.Client
}

// SyncResult counts what happened.
type SyncResult struct {
	BulkRows       int
	BulkDuration   time.Duration
	Inserted       int64
	Updated        int64
	RolledBack     int64 // transactions rolled back (their rows must not arrive)
	LateCommits    int64 // transactions held open across syncs before committing
	Requests       int64 // POST /api/sync
	Duplicates     int64 // ... answered with the pending sync's job id
	Restarts       int64 // sync workers restarted
	HardRestarts   int64 // ... with a budget too short for the running page
	FinalSyncs     int
	RequestErrors  int64
	WriterOutages  int64 // writer transactions cut off by the source going away
	Elapsed        time.Duration
	WriterError    error
	lastRunnerStop error
}

func (s *Sync) defaults() {
	if s.Bulk <= 0 {
		s.Bulk = 20_000
	}
	if s.Duration <= 0 {
		s.Duration = 8 * time.Second
	}
	if s.Writers <= 0 {
		s.Writers = 4
	}
	if s.RestartEvery <= 0 {
		s.RestartEvery = 1500 * time.Millisecond
	}
	if s.PageSize <= 0 {
		s.PageSize = 200
	}
	if s.Client == nil {
		s.Client = &http.Client{Timeout: 30 * time.Second}
	}
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
}

// workers starts a runner that works only the sync queue.
func (s *Sync) workers(ctx context.Context) (*runner.Runner, error) {
	w := river.NewWorkers()
	river.AddWorker(w, &jobs.SyncWorker{Pool: s.Dest, Sources: map[string]datasync.Source{s.Name: s.Src}, PageSize: s.PageSize})
	r, err := runner.New(s.Dest, &runner.Config{
		Workers: w, Queues: map[string]river.QueueConfig{jobs.QueueSync: {MaxWorkers: 4}},
		FetchPollInterval: 100 * time.Millisecond, Logger: s.Logger,
		RetryPolicy: &runner.Backoff{Min: 50 * time.Millisecond, Max: time.Second},
	})
	if err != nil {
		return nil, err
	}
	return r, r.Start(ctx)
}

// Run runs the workload.
func (s *Sync) Run(ctx context.Context) (*SyncResult, error) {
	s.defaults()
	res := &SyncResult{BulkRows: s.Bulk}
	start := time.Now()
	var r *runner.Runner
	var rmu sync.Mutex
	if !s.ExternalWorkers {
		var err error
		if r, err = s.workers(ctx); err != nil {
			return nil, err
		}
		defer func() {
			rmu.Lock()
			defer rmu.Unlock()
			stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = r.Stop(stopCtx)
		}()
	}

	// Bulk: rows sharing one transaction (and timestamp), synced alone.
	if _, err := s.Source.Exec(ctx, `INSERT INTO `+SourceTable+` (id, name, amount)
		SELECT 'bulk-' || g, 'bulk', g FROM generate_series(1, $1::int) g`, s.Bulk); err != nil {
		return nil, err
	}
	bulkStart := time.Now()
	if err := s.syncToEnd(ctx, res, "bulk"); err != nil {
		return nil, err
	}
	res.BulkDuration = time.Since(bulkStart)

	// Concurrent writers, sync requests and worker restarts.
	writeCtx, stopWriting := context.WithTimeout(ctx, s.Duration)
	defer stopWriting()
	bar := progress.New(s.Progress, int64(s.Duration/time.Second), "sync writers")
	var wg sync.WaitGroup
	var writerErr atomic.Pointer[error]
	for w := range s.Writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.write(writeCtx, w, res); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				writerErr.Store(&err)
			}
		}()
	}
	wg.Add(1)
	go func() { // clients asking for syncs
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-writeCtx.Done():
				return
			case <-t.C:
				if _, err := s.request(ctx, res); err != nil {
					atomic.AddInt64(&res.RequestErrors, 1)
				}
			}
		}
	}()
	wg.Add(1)
	go func() { // sync workers restarted, some of them hard
		defer wg.Done()
		if s.ExternalWorkers {
			return
		}
		t := time.NewTicker(s.RestartEvery)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-writeCtx.Done():
				return
			case <-t.C:
			}
			budget := 5 * time.Second
			if i%2 == 1 {
				budget = 10 * time.Millisecond // interrupts the running page
				atomic.AddInt64(&res.HardRestarts, 1)
			}
			rmu.Lock()
			stopCtx, cancel := context.WithTimeout(ctx, budget)
			res.lastRunnerStop = r.Stop(stopCtx)
			cancel()
			next, err := s.workers(ctx)
			if err == nil {
				r = next
			}
			rmu.Unlock()
			atomic.AddInt64(&res.Restarts, 1)
		}
	}()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for i := int64(1); ; i++ {
			select {
			case <-writeCtx.Done():
				return
			case <-t.C:
				bar.Set(i)
			}
		}
	}()
	wg.Wait()
	bar.Finish()
	if p := writerErr.Load(); p != nil {
		res.WriterError = *p
		return res, fmt.Errorf("demo writer: %w", *p)
	}

	// The writers stopped: one sync that starts now brings everything over.
	if err := s.syncToEnd(ctx, res, "final"); err != nil {
		return res, err
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// write is one writer: transactions of inserts (rows sharing a timestamp)
// and updates, some held open before they commit, some rolled back.
func (s *Sync) write(ctx context.Context, w int, res *SyncResult) error {
	rng := rand.New(rand.NewPCG(uint64(w), 99))
	for i := 0; ; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		rollback := rng.IntN(20) == 0
		late := rng.IntN(8) == 0
		n := 1 + rng.IntN(20)
		errRollback := errors.New("rolled back on purpose")
		err := pgx.BeginFunc(ctx, s.Source, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO `+SourceTable+` (id, name, amount)
				SELECT 'w' || $1::int || '-' || $2::int || '-' || g, 'new', g FROM generate_series(1, $3::int) g`, w, i, n); err != nil {
				return err
			}
			tag, err := tx.Exec(ctx, `UPDATE `+SourceTable+` SET amount = amount + 1, name = 'updated', updated_at = now()
				WHERE id IN (SELECT id FROM `+SourceTable+` TABLESAMPLE SYSTEM (1) LIMIT 5)`)
			if err != nil {
				return err
			}
			if late {
				// Written now, timestamped now, committed after a sync or two.
				select {
				case <-ctx.Done():
				case <-time.After(time.Duration(100+rng.IntN(400)) * time.Millisecond):
				}
			}
			if rollback {
				return errRollback
			}
			atomic.AddInt64(&res.Inserted, int64(n))
			atomic.AddInt64(&res.Updated, tag.RowsAffected())
			return nil
		})
		switch {
		case errors.Is(err, errRollback):
			atomic.AddInt64(&res.RolledBack, 1)
		case err != nil && ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			var pgErr interface{ SQLState() string }
			if errors.As(err, &pgErr) && pgErr.SQLState() == "40P01" {
				continue // two writers updating the same rows: retry
			}
			if problem.Unavailable(err) {
				// The source went away (the chaos run restarts it): whatever
				// this transaction did or did not commit, the audit compares
				// the final states.
				atomic.AddInt64(&res.WriterOutages, 1)
				time.Sleep(200 * time.Millisecond)
				continue
			}
			return err
		case late:
			atomic.AddInt64(&res.LateCommits, 1)
		}
	}
}

// request asks for a sync over HTTP, asking again for up to 30 s while it
// gets no answer or a 5xx.
func (s *Sync) request(ctx context.Context, res *SyncResult) (*api.SyncResponse, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := s.requestOnce(ctx, res)
		var transient *transientError
		if err == nil || !errors.As(err, &transient) || time.Now().After(deadline) || ctx.Err() != nil {
			return out, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// transientError is a request that got no answer or a 5xx.
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }

func (s *Sync) requestOnce(ctx context.Context, res *SyncResult) (*api.SyncResponse, error) {
	base := s.BaseURL
	if s.Targets != nil {
		base = s.Targets()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/sync/"+s.Name, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.Token)
	resp, err := s.Client.Do(req)
	if err != nil {
		return nil, &transientError{err}
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 500 {
		return nil, &transientError{fmt.Errorf("POST /api/sync/%s: %d %s", s.Name, resp.StatusCode, raw)}
	}
	if resp.StatusCode != http.StatusAccepted {
		return nil, fmt.Errorf("POST /api/sync/%s: %d %s", s.Name, resp.StatusCode, raw)
	}
	var out api.SyncResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, err
	}
	atomic.AddInt64(&res.Requests, 1)
	if out.Duplicate {
		atomic.AddInt64(&res.Duplicates, 1)
	}
	return &out, nil
}

// syncToEnd asks for syncs until one that was new when asked for has
// completed: it took its snapshot after this call began.
func (s *Sync) syncToEnd(ctx context.Context, res *SyncResult, what string) error {
	deadline := time.Now().Add(4 * time.Minute)
	for time.Now().Before(deadline) {
		out, err := s.request(ctx, res)
		if err != nil {
			return err
		}
		if err := s.waitJob(ctx, out.JobID, deadline); err != nil {
			return fmt.Errorf("%s sync: %w", what, err)
		}
		if !out.Duplicate {
			res.FinalSyncs++
			return nil
		}
	}
	return fmt.Errorf("%s sync: not caught up within 4 minutes", what)
}

func (s *Sync) waitJob(ctx context.Context, id int64, deadline time.Time) error {
	for time.Now().Before(deadline) {
		var state string
		err := s.Dest.QueryRow(ctx, `SELECT state::text FROM river_job WHERE id = $1`, id).Scan(&state)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		switch state {
		case "completed":
			return nil
		case "discarded", "cancelled":
			return fmt.Errorf("sync job %d ended %s", id, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("sync job %d did not complete in time", id)
}

// AuditSync compares the source table and the synced records row by row.
func AuditSync(ctx context.Context, s *Sync, res *SyncResult) (*Audit, error) {
	a := &Audit{Title: "Data sync audit"}
	load := func(pool *pgxpool.Pool, sql string, args ...any) (map[string]string, error) {
		rows, err := pool.Query(ctx, sql, args...)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		out := map[string]string{}
		for rows.Next() {
			var id, data string
			var version int64
			if err := rows.Scan(&id, &version, &data); err != nil {
				return nil, err
			}
			out[id] = strconv.FormatInt(version, 10) + " " + data
		}
		return out, rows.Err()
	}
	source, err := load(s.Source, `SELECT id, version, (to_jsonb(t) - '_xid' - 'version')::text FROM `+SourceTable+` t`)
	if err != nil {
		return nil, fmt.Errorf("reading the source: %w", err)
	}
	dest, err := load(s.Dest, `SELECT record_id, version, data::text FROM data_records WHERE source = $1`, s.Name)
	if err != nil {
		return nil, fmt.Errorf("reading the destination: %w", err)
	}
	var missing, extra, differing int64
	for id, v := range source {
		got, ok := dest[id]
		switch {
		case !ok:
			missing++
		case got != v:
			differing++
		}
	}
	for id := range dest {
		if _, ok := source[id]; !ok {
			extra++
		}
	}
	st, err := datasync.Status(ctx, s.Dest, s.Name)
	if err != nil {
		return nil, err
	}

	a.info("source rows", strconv.Itoa(len(source)))
	a.info("written concurrently: inserted / updated", fmt.Sprintf("%d / %d", res.Inserted, res.Updated))
	a.info("transactions committed late / rolled back", fmt.Sprintf("%d / %d", res.LateCommits, res.RolledBack))
	a.info("sync requests (answered with the pending sync)", fmt.Sprintf("%d (%d)", res.Requests, res.Duplicates))
	a.info("sync workers restarted (mid-page)", fmt.Sprintf("%d (%d)", res.Restarts, res.HardRestarts))
	a.expect("rows missing at the destination", missing, 0)
	a.expect("rows at the destination not in the source", extra, 0)
	a.expect("rows with another version or data", differing, 0)
	a.expect("sync request errors", res.RequestErrors, 0)
	a.info("pages / rows written / rows unchanged", fmt.Sprintf("%d / %d / %d", st.Pages, st.RowsApplied, st.RowsUnchanged))
	if res.BulkDuration > 0 {
		a.info("bulk sync rate", fmt.Sprintf("%d rows in %s: %.0f rows/s", res.BulkRows, res.BulkDuration.Round(time.Millisecond),
			float64(res.BulkRows)/res.BulkDuration.Seconds()))
	}
	if st.CaughtUpTo != nil {
		a.info("caught up to (source time)", st.CaughtUpTo.Format(time.RFC3339Nano))
	}
	return a, nil
}
