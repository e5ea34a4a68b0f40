package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/pgonce/pgonce/datasync"
	"github.com/pgonce/pgonce/runner"
)

// KindSyncData is the job kind of SyncArgs.
const KindSyncData = "sync_data"

// QueueSync is the queue sync jobs run in.
const QueueSync = "sync"

// Defaults for SyncWorker.
const (
	SyncPageSizeDefault  = 500
	SyncRunBudgetDefault = 5 * time.Second
	SyncMaxAttempts      = 10
)

// SyncArgs syncs one data source into data_records.
//
// Dedupe policy: at most one sync per source queued or running at a time,
// across all queues: a request while one is available, scheduled, running or
// retrying is a duplicate and reports that job's id. Once a sync completed,
// the next request runs a new one (a data sync may run again). Only Source
// is in the unique key; Trigger (who asked, and in which request) is not, so
// two requests from different clients for one source are one sync.
// EnqueueSync can also limit syncs to one per period (SyncOpts.Period),
// computed from the scheduled time or the database clock.
type SyncArgs struct {
	Source  string      `json:"source" river:"unique"`
	Trigger SyncTrigger `json:"trigger"`
}

// SyncTrigger says what asked for a sync. It is not part of the unique key.
type SyncTrigger struct {
	By        string `json:"by,omitempty"`
	RequestID string `json:"request_id,omitempty"`
}

// Kind implements river.JobArgs.
func (SyncArgs) Kind() string { return KindSyncData }

// syncUniqueStates are the states in which a sync holds its source's key.
var syncUniqueStates = []rivertype.JobState{
	rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRunning,
	rivertype.JobStateRetryable, rivertype.JobStateScheduled,
}

// InsertOpts implements river.JobArgsWithInsertOpts.
func (SyncArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{
		Queue:       QueueSync,
		MaxAttempts: SyncMaxAttempts,
		UniqueOpts:  river.UniqueOpts{ByArgs: true, ByState: syncUniqueStates},
	}
}

// SyncOpts tune EnqueueSync. The zero value is fine.
type SyncOpts struct {
	// Period, when set, also makes the sync unique per period: one per
	// source per window of this length (windows aligned on UTC multiples of
	// it), from ScheduledAt or the database clock.
	Period time.Duration
	// ScheduledAt runs the sync later.
	ScheduledAt time.Time
	// Full sends the source's cursor back to the beginning first (in the
	// same transaction): everything is read again, unchanged records stay.
	Full bool
}

// EnqueueSync asks for a sync of source in the caller's transaction and
// reports the pending one as a duplicate.
func EnqueueSync(ctx context.Context, r *runner.Runner, tx pgx.Tx, source string, trigger SyncTrigger, opts *SyncOpts) (*runner.EnqueueResult, error) {
	if !datasync.ValidName(source) {
		return nil, fmt.Errorf("jobs: invalid source name %q", source)
	}
	if opts == nil {
		opts = &SyncOpts{}
	}
	if opts.Full {
		if err := datasync.Reset(ctx, tx, source); err != nil {
			return nil, err
		}
	}
	insert := &river.InsertOpts{ScheduledAt: opts.ScheduledAt}
	if opts.Period > 0 {
		insert.UniqueOpts = river.UniqueOpts{ByArgs: true, ByPeriod: opts.Period, ByState: syncUniqueStates}
	}
	return r.Enqueue(ctx, tx, SyncArgs{Source: source, Trigger: trigger}, insert)
}

// PeriodicSync returns the periodic job that asks for a sync of source every
// interval; a tick while the previous sync is still pending is a duplicate.
func PeriodicSync(source string, interval time.Duration) *river.PeriodicJob {
	return river.NewPeriodicJob(river.PeriodicInterval(interval), func() (river.JobArgs, *river.InsertOpts) {
		return SyncArgs{Source: source, Trigger: SyncTrigger{By: "schedule"}}, nil
	}, &river.PeriodicJobOpts{RunOnStart: true})
}

// SyncWorker works SyncArgs: page by page. Each page is read from the
// source after the cursor, then one transaction locks the cursor, checks it
// has not moved, upserts the page (never replacing a newer version) and moves
// the cursor; the last page's transaction also completes the job. A long backlog is many transactions,
// and after RunBudget the job snoozes (without using an attempt) so that it
// neither monopolises a worker nor delays a shutdown. A page the source
// cannot deliver, or delivers with bad data, fails with its error recorded
// in sync_cursors, the cursor unmoved and nothing written; River retries it.
type SyncWorker struct {
	river.WorkerDefaults[SyncArgs]

	Pool    *pgxpool.Pool
	Sources map[string]datasync.Source
	// PageSize defaults to SyncPageSizeDefault.
	PageSize int
	// RunBudget defaults to SyncRunBudgetDefault.
	RunBudget time.Duration
}

// errMorePages ends a page transaction that committed without completing
// the job.
var errMorePages = errors.New("more pages")

// Work implements river.Worker.
func (w *SyncWorker) Work(ctx context.Context, job *river.Job[SyncArgs]) error {
	src, ok := w.Sources[job.Args.Source]
	if !ok {
		return river.JobCancel(fmt.Errorf("unknown data source %q", job.Args.Source))
	}
	pageSize := w.PageSize
	if pageSize <= 0 {
		pageSize = SyncPageSizeDefault
	}
	budget := w.RunBudget
	if budget <= 0 {
		budget = SyncRunBudgetDefault
	}
	start := time.Now()
	var pages, rows int64
	for {
		last, n, err := w.page(ctx, job, src, pageSize)
		pages++
		rows += n
		_ = river.MetadataSet(ctx, "sync", map[string]any{"pages_this_run": pages, "rows_this_run": rows, "attempt": job.Attempt})
		switch {
		case err != nil:
			return err
		case last:
			return nil
		case ctx.Err() != nil:
			return ctx.Err() // a shutdown: the runner requeues without an attempt
		case time.Since(start) > budget:
			return river.JobSnooze(0)
		}
	}
}

// errCursorMoved ends a page transaction whose page was read from a cursor
// that another sync of the same source has moved since.
var errCursorMoved = errors.New("cursor moved")

// page syncs one page; last reports that it completed the job.
//
// The page is read from the source outside any transaction (a slow source
// holds no connection and no lock); the transaction then locks the cursor
// and applies the page only if the cursor is still where the page was read
// from, so two syncs of one source never apply a page twice or skip one.
func (w *SyncWorker) page(ctx context.Context, job *river.Job[SyncArgs], src datasync.Source, size int) (last bool, rows int64, err error) {
	name := job.Args.Source
	for {
		from := ""
		cur, err := datasync.Status(ctx, w.Pool, name)
		switch {
		case err == nil:
			from = cur.Cursor
		case !errors.Is(err, datasync.ErrUnknownSource):
			return false, 0, err
		}
		page, err := src.Changes(ctx, from, size)
		if err == nil {
			err = page.Validate()
		}
		if err != nil {
			// Record the error; move nothing, write nothing else.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if rerr := pgx.BeginFunc(rctx, w.Pool, func(tx pgx.Tx) error {
				if _, err := datasync.LockCursor(rctx, tx, name); err != nil {
					return err
				}
				return datasync.RecordError(rctx, tx, name, err)
			}); rerr != nil {
				return false, 0, errors.Join(err, rerr)
			}
			return false, 0, fmt.Errorf("syncing %s: %w", name, err)
		}

		err = runner.WorkTx(ctx, w.Pool, job, func(ctx context.Context, tx pgx.Tx) error {
			locked, err := datasync.LockCursor(ctx, tx, name)
			if err != nil {
				return err
			}
			if locked.Cursor != from {
				return errCursorMoved
			}
			applied, unchanged, err := datasync.Apply(ctx, tx, name, page.Changes)
			if err != nil {
				return err
			}
			if err := datasync.Advance(ctx, tx, name, page, applied, unchanged); err != nil {
				return err
			}
			if page.More {
				return runner.KeepChanges(errMorePages)
			}
			return nil
		})
		switch {
		case errors.Is(err, errCursorMoved):
			continue // read again from where the other sync left it
		case errors.Is(err, errMorePages):
			return false, int64(len(page.Changes)), nil
		case err != nil:
			return false, 0, err
		}
		return true, int64(len(page.Changes)), nil
	}
}
