package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
)

// Runner enqueues jobs in its callers' transactions and works them.
type Runner struct {
	pool     *pgxpool.Pool
	client   *river.Client[pgx.Tx]
	config   *Config
	logger   *slog.Logger
	jobTable string // river_job, qualified when Config.Schema is set

	started  atomic.Bool
	stopping atomic.Bool

	counts    enqueueCounts
	flushStop chan struct{}
	flushDone chan struct{}

	inflightMu sync.Mutex
	inflight   map[int64]struct{} // jobs this process is working now
}

// New returns a runner over pool. Pass nil for config to take every default.
// The pool should allow at least as many connections as jobs that hold a
// transaction at once; NewPool makes one that does.
func New(pool *pgxpool.Pool, config *Config) (*Runner, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: pool is nil", ErrInvalidConfig)
	}
	cfg := config.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &Runner{
		pool:     pool,
		config:   cfg,
		logger:   cfg.Logger,
		jobTable: "river_job",
		inflight: map[int64]struct{}{},
	}
	if cfg.Schema != "" {
		r.jobTable = pgx.Identifier{cfg.Schema, "river_job"}.Sanitize()
	}

	riverConfig := &river.Config{
		CompletedJobRetentionPeriod: cfg.CompletedJobRetentionPeriod,
		ErrorHandler:                cfg.ErrorHandler,
		FetchCooldown:               cfg.FetchCooldown,
		FetchPollInterval:           cfg.FetchPollInterval,
		Hooks:                       cfg.Hooks,
		ID:                          cfg.ID,
		JobTimeout:                  cfg.JobTimeout,
		Logger:                      cfg.Logger,
		MaxAttempts:                 cfg.MaxAttempts,
		Middleware:                  append([]rivertype.Middleware{&insertMiddleware{counts: &r.counts}, &shutdownMiddleware{r: r}}, cfg.Middleware...),
		PeriodicJobs:                cfg.PeriodicJobs,
		RescueStuckJobsAfter:        cfg.RescueStuckJobsAfter,
		RetryPolicy:                 cfg.RetryPolicy,
		Schema:                      cfg.Schema,
		Test:                        river.TestConfig{Time: cfg.Clock},
	}
	if !cfg.InsertOnly {
		riverConfig.Queues = cfg.Queues
		riverConfig.Workers = cfg.Workers
	}
	client, err := river.NewClient(riverpgxv5.New(pool), riverConfig)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	r.client = client

	if !cfg.InsertOnly {
		workers := 0
		for _, q := range cfg.Queues {
			workers += q.MaxWorkers
		}
		if maxConns := int(pool.Config().MaxConns); maxConns < min(workers, PoolMaxConnsDefault) {
			r.logger.Warn("runner: the pool has fewer connections than jobs that can hold a transaction at once; throughput will be capped",
				"pool_max_conns", maxConns, "max_workers", workers, "hint", "use runner.NewPool or raise pool_max_conns")
		}
	}
	return r, nil
}

// NewPool returns a pgx pool for databaseURL sized for a runner: MaxConns is
// PoolMaxConnsDefault (32) unless the URL sets pool_max_conns, and connecting
// gives up after 5 s unless the URL sets connect_timeout, so that a database
// outage is reported quickly instead of hanging requests.
func NewPool(ctx context.Context, databaseURL string) (*pgxpool.Pool, error) {
	cfg, err := PoolConfig(databaseURL)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("runner: creating pool: %w", err)
	}
	return pool, nil
}

// PoolConfig parses databaseURL into the pool configuration NewPool uses.
func PoolConfig(databaseURL string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("runner: parsing database URL: %w", err)
	}
	if !hasParam(databaseURL, "pool_max_conns") {
		cfg.MaxConns = PoolMaxConnsDefault
	}
	if !hasParam(databaseURL, "connect_timeout") {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	return cfg, nil
}

// Client returns the River client underneath, for what the runner does not
// wrap (subscriptions, job listing, queue pausing).
func (r *Runner) Client() *river.Client[pgx.Tx] { return r.client }

// Pool returns the pool the runner was built with.
func (r *Runner) Pool() *pgxpool.Pool { return r.pool }

// ID returns the runner's unique name among the runners of the database.
func (r *Runner) ID() string { return r.config.ID }

// Start starts working jobs, and writing the runner's enqueue counts to
// ops_enqueue_counts every EnqueueCountsFlushInterval. The context only
// bounds start-up: call Stop to stop. An InsertOnly runner works nothing; it
// only writes its counts.
func (r *Runner) Start(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("runner: already started")
	}
	if !r.config.InsertOnly {
		if err := r.client.Start(context.WithoutCancel(ctx)); err != nil {
			r.started.Store(false)
			return fmt.Errorf("runner: starting: %w", err)
		}
	}
	r.flushStop, r.flushDone = make(chan struct{}), make(chan struct{})
	go r.runFlusher(r.flushStop, r.flushDone)
	return nil
}

// Stop shuts the runner down within a budget: the deadline of ctx, or
// Config.ShutdownTimeout after the call when ctx has none.
//
// No new jobs are fetched. Running jobs first get most of the budget to
// finish; then their contexts are cancelled, and a job that returns because
// of that cancellation goes back to the queue without using up an attempt
// (even with MaxAttempts 1). Jobs still running half a second before the
// deadline, because they ignore cancellation, are put back in the queue the
// same way, and Stop returns a *ShutdownError naming them; their goroutines
// may still be running, and their transactions can no longer complete them
// (WorkTx then rolls back their effect). No job this runner held is left
// running.
func (r *Runner) Stop(ctx context.Context) error {
	if !r.started.Load() || !r.stopping.CompareAndSwap(false, true) {
		return nil
	}
	defer func() {
		close(r.flushStop)
		<-r.flushDone
	}()
	if r.config.InsertOnly {
		return nil
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(r.config.ShutdownTimeout)
	}
	budget := time.Until(deadline)
	reserve := min(budget/10, 500*time.Millisecond) // for the requeue
	hard := min(budget/2, 3*time.Second)            // for cancelled jobs to return
	softDeadline := deadline.Add(-reserve - hard)
	hardDeadline := deadline.Add(-reserve)

	softCtx, cancel := context.WithDeadline(ctx, softDeadline)
	err := r.client.Stop(softCtx)
	cancel()
	if err == nil {
		return nil
	}
	r.logger.Info("runner: jobs still running after the graceful part of shutdown; cancelling them")

	hardCtx, cancel := context.WithDeadline(ctx, hardDeadline)
	err = r.client.StopAndCancel(hardCtx)
	cancel()
	if err == nil {
		return nil
	}

	// The deadline may have passed already; the requeue must run anyway, or
	// the jobs would stay running until River's rescuer finds them.
	requeueCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for _, g := range r.config.Groups {
		// Jobs still in a group transaction hold their rows locked.
		if err := g.Abort(requeueCtx); err != nil {
			r.logger.Warn("runner: aborting group transactions failed", "error", err)
		}
	}
	ids, rerr := r.requeueOwnRunningJobs(requeueCtx)
	if rerr != nil {
		return fmt.Errorf("runner: jobs ignored cancellation and requeueing them failed: %w", rerr)
	}
	if len(ids) == 0 {
		return nil
	}
	r.logger.Warn("runner: jobs ignored cancellation; requeued without using an attempt", "job_ids", ids)
	return &ShutdownError{Requeued: ids}
}

// requeueOwnRunningJobs makes the jobs this runner last fetched and that are
// still running available again, giving back the attempt they used.
func (r *Runner) requeueOwnRunningJobs(ctx context.Context) ([]int64, error) {
	rows, err := r.pool.Query(ctx, `
		UPDATE `+r.jobTable+`
		SET state = 'available',
		    attempt = greatest(attempt - 1, 0),
		    scheduled_at = now(),
		    metadata = metadata || jsonb_build_object('requeued_at_shutdown_by', $1::text)
		WHERE state = 'running'
		  AND attempted_by[array_upper(attempted_by, 1)] = $1
		RETURNING id`, r.config.ID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// OrphanAfter is how long a job this runner fetched may stay running in the
// database while no goroutine of this process works it before the runner
// puts it back in the queue (see requeueOrphans).
const OrphanAfter = 30 * time.Second

// requeueOrphans puts back in the queue, without using up an attempt, the
// jobs this runner fetched that the database still shows running although
// no goroutine of this process works them any more: their end could not be
// recorded, typically because the database went away meanwhile. River's
// rescuer would find them only after RescueStuckJobsAfter, and would count
// the attempt (discarding a job on its last one).
func (r *Runner) requeueOrphans(ctx context.Context) {
	r.inflightMu.Lock()
	ids := make([]int64, 0, len(r.inflight))
	for id := range r.inflight {
		ids = append(ids, id)
	}
	r.inflightMu.Unlock()
	rows, err := r.pool.Query(ctx, `
		UPDATE `+r.jobTable+`
		SET state = 'available',
		    attempt = greatest(attempt - 1, 0),
		    scheduled_at = now(),
		    metadata = metadata || jsonb_build_object('requeued_orphan_by', $1::text)
		WHERE state = 'running'
		  AND attempted_by[array_upper(attempted_by, 1)] = $1
		  AND attempted_at < now() - $3::interval
		  AND NOT (id = ANY($2))
		RETURNING id`, r.config.ID, ids, OrphanAfter.String())
	if err != nil {
		r.logger.Debug("runner: looking for orphaned jobs failed", "error", err)
		return
	}
	requeued, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err == nil && len(requeued) > 0 {
		r.logger.Warn("runner: jobs left running although this process no longer works them (their end could not be recorded); requeued without using an attempt",
			"job_ids", requeued)
	}
}

// shutdownMiddleware turns an error caused by the shutdown's cancellation
// into a zero-length snooze: River then makes the job available again and
// gives back the attempt it used, so a shutdown never burns an attempt or
// discards a job.
type shutdownMiddleware struct {
	river.MiddlewareDefaults
	r *Runner
}

func (m *shutdownMiddleware) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	m.r.inflightMu.Lock()
	m.r.inflight[job.ID] = struct{}{}
	m.r.inflightMu.Unlock()
	defer func() {
		m.r.inflightMu.Lock()
		delete(m.r.inflight, job.ID)
		m.r.inflightMu.Unlock()
	}()
	err := doInner(ctx)
	if err == nil || !m.r.stopping.Load() || !errors.Is(ctx.Err(), context.Canceled) {
		return err
	}
	var snooze *rivertype.JobSnoozeError
	var cancel *rivertype.JobCancelError
	if errors.As(err, &snooze) || errors.As(err, &cancel) {
		return err
	}
	m.r.logger.Info("runner: job interrupted by shutdown; back to the queue without using an attempt",
		"job_id", job.ID, "kind", job.Kind, "error", err)
	return river.JobSnooze(0)
}

func hasParam(databaseURL, name string) bool {
	return strings.Contains(strings.ToLower(databaseURL), name+"=")
}
