package runner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// EnqueueResult reports what Enqueue did.
type EnqueueResult struct {
	// JobID is the new job's id, or for a duplicate the id of the existing
	// job that holds the same unique key.
	JobID int64

	// Duplicate is true when the job's kind is unique (its InsertOpts set
	// UniqueOpts) and a job with the same unique key already existed in one
	// of the unique states: nothing was inserted.
	Duplicate bool

	// Job is the inserted job, or the existing one for a duplicate.
	Job *rivertype.JobRow
}

// Enqueue inserts a job in the caller's transaction tx: if tx rolls back the
// job never existed; once tx commits the job will run. Write the business row
// that causes the job in the same transaction (the transactional outbox).
//
// For a unique job kind, a duplicate is detected by the database (a unique
// index over a hash of the kind and its unique args) and reported with the
// existing job's id; two transactions enqueueing the same unique job at once
// both commit, one learning Inserted and the other Duplicate with the same id.
//
// Uniqueness by period (UniqueOpts.ByPeriod) is computed from the database
// clock when opts set no ScheduledAt, so that application servers whose
// clocks disagree still share one window.
func (r *Runner) Enqueue(ctx context.Context, tx pgx.Tx, args river.JobArgs, opts *river.InsertOpts) (*EnqueueResult, error) {
	if tx == nil {
		return nil, errors.New("runner: Enqueue needs the caller's transaction")
	}
	opts, err := withDatabaseClock(ctx, tx, args, opts)
	if err != nil {
		return nil, fmt.Errorf("enqueueing %s: %w", args.Kind(), translate(err))
	}
	res, err := r.client.InsertTx(ctx, tx, args, opts)
	if err != nil {
		return nil, fmt.Errorf("enqueueing %s: %w", args.Kind(), translate(err))
	}
	return &EnqueueResult{JobID: res.Job.ID, Duplicate: res.UniqueSkippedAsDuplicate, Job: res.Job}, nil
}

// withDatabaseClock sets ScheduledAt to the database's clock for a job unique
// by period that has no ScheduledAt, since River otherwise buckets the period
// by the application's clock.
func withDatabaseClock(ctx context.Context, tx pgx.Tx, args river.JobArgs, opts *river.InsertOpts) (*river.InsertOpts, error) {
	var argOpts river.InsertOpts
	if withOpts, ok := args.(river.JobArgsWithInsertOpts); ok {
		argOpts = withOpts.InsertOpts()
	}
	unique := argOpts.UniqueOpts
	scheduled := argOpts.ScheduledAt
	if opts != nil {
		if !uniqueOptsEmpty(opts.UniqueOpts) {
			unique = opts.UniqueOpts
		}
		if !opts.ScheduledAt.IsZero() {
			scheduled = opts.ScheduledAt
		}
	}
	if unique.ByPeriod <= 0 || !scheduled.IsZero() {
		return opts, nil
	}
	var now time.Time
	if err := tx.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&now); err != nil {
		return nil, fmt.Errorf("reading the database clock: %w", err)
	}
	out := river.InsertOpts{}
	if opts != nil {
		out = *opts
	}
	out.ScheduledAt = now
	return &out, nil
}

func uniqueOptsEmpty(o river.UniqueOpts) bool {
	return !o.ByArgs && o.ByPeriod == 0 && !o.ByQueue && o.ByState == nil && !o.ExcludeKind
}
