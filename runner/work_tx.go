package runner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
)

// Beginner begins transactions: *pgxpool.Pool, *pgxpool.Conn and *pgx.Conn
// all are.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// WorkTx is the worker's half of the outbox: it runs fn in a new transaction
// and completes job in that same transaction, so the job's effect and its
// completion commit together or not at all. A retried job therefore finds
// either nothing done or everything done.
//
// fn should first lock what it acts on (SELECT ... FOR UPDATE, or an INSERT
// that a unique constraint guards), check whether the effect is already there,
// and only then act: a job can run more than once (a retry after a crash, a
// rescue, a duplicate enqueued after retention) and two runs can overlap.
//
// When fn returns an error the transaction rolls back and the error goes to
// River, which retries the job per the retry policy, unless the error is
// wrapped with KeepChanges: then what fn wrote is committed first (to record
// a failed attempt, say), and the wrapped error is returned only if that
// commit succeeded; otherwise WorkTx returns the commit's error. River's JobCancel and JobSnooze errors may be
// returned, wrapped or not.
//
// If the job stopped running while fn ran (rescued, cancelled, or requeued by
// a shutdown), the completion fails, everything rolls back and WorkTx returns
// ErrJobNotRunning.
func WorkTx[T river.JobArgs](ctx context.Context, db Beginner, job *river.Job[T], fn func(ctx context.Context, tx pgx.Tx) error) error {
	if g, ok := db.(*Group); ok {
		if job.AttemptedAt != nil {
			err := workGroupTx(ctx, g, job.JobRow, fn)
			if !errors.Is(err, errOutOfGroup) {
				return err
			}
		}
		// The lane was busy, or fn waited on a lock in the shared
		// transaction: run in a transaction of its own, where waiting
		// holds up no other job and cancellation interrupts it.
		db = g.pool
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("beginning job transaction: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit

	if err := fn(ctx, tx); err != nil {
		return keepOrReturn(ctx, tx, err)
	}

	// The effect is done: its record and the completion must not be lost to
	// a cancellation (a shutdown, a timeout) that arrives now.
	finishCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	completed, err := river.JobCompleteTx[*riverpgxv5.Driver](finishCtx, tx, job)
	if errors.Is(err, rivertype.ErrNotFound) {
		return ErrJobNotRunning
	}
	if err != nil {
		return fmt.Errorf("completing job %d: %w", job.ID, err)
	}
	if completed.State != rivertype.JobStateCompleted {
		// River's update leaves a job that is no longer running as it is.
		return ErrJobNotRunning
	}
	if err := tx.Commit(finishCtx); err != nil {
		return fmt.Errorf("committing job %d: %w", job.ID, err)
	}
	return nil
}

// workGroupTx is WorkTx on a Group: the job's savepoint starts by locking
// the job's row (it must still be this run's), and the job is completed
// with the rest of its batch, just before the batch commits.
func workGroupTx(ctx context.Context, g *Group, job *rivertype.JobRow, fn func(ctx context.Context, tx pgx.Tx) error) error {
	tx, err := g.begin(ctx, &jobRun{id: job.ID, attemptedAt: *job.AttemptedAt})
	if err != nil {
		if errors.Is(err, ErrJobNotRunning) || errors.Is(err, errOutOfGroup) {
			return err
		}
		return fmt.Errorf("beginning job transaction: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit

	if err := fn(ctx, tx); err != nil {
		if tx.lockTimedOut(err) {
			// Nothing of fn's is left (its savepoint is rolled back with
			// the job's lock): fn runs again on its own.
			_ = tx.Rollback(context.WithoutCancel(ctx))
			g.stats.outOfGroup.Add(1)
			return errOutOfGroup
		}
		return keepOrReturn(ctx, tx, err)
	}
	finishCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := tx.commit(finishCtx, true); err != nil {
		return fmt.Errorf("committing job %d: %w", job.ID, err)
	}
	return nil
}

// keepOrReturn handles fn's error: a KeepChanges error commits what fn
// wrote, then hands on the error it wraps; any other error is returned as it
// is, and the caller's deferred Rollback undoes fn's writes.
func keepOrReturn(ctx context.Context, tx pgx.Tx, err error) error {
	var keep *keepChangesError
	if !errors.As(err, &keep) {
		return err
	}
	// The job's context may be cancelled (a timeout, a shutdown): the
	// record of the attempt must still be written.
	commitCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if cerr := tx.Commit(commitCtx); cerr != nil {
		// Not wrapping keep.err: what it meant (a snooze, a cancel, a step
		// that the caller takes next) rests on a record that was not
		// written. The job fails and is retried.
		return fmt.Errorf("committing the record of %q: %w", keep.err.Error(), cerr)
	}
	return keep.err
}

// KeepChanges wraps err so that WorkTx commits what fn wrote before handing
// err to River: use it to record a failed attempt (an error message, an
// attempt counter, a status) that must survive the retry.
func KeepChanges(err error) error {
	if err == nil {
		return nil
	}
	return &keepChangesError{err: err}
}

type keepChangesError struct{ err error }

func (e *keepChangesError) Error() string { return e.err.Error() }
func (e *keepChangesError) Unwrap() error { return e.err }
