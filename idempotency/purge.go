package idempotency

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// KindPurge is the job kind of PurgeArgs.
const KindPurge = "idempotency_purge"

// PurgeBatchSize is how many expired keys one statement deletes.
const PurgeBatchSize = 1000

// PurgeIntervalDefault is how often PeriodicPurge runs.
const PurgeIntervalDefault = time.Hour

// PurgeArgs deletes expired idempotency keys. One runs at a time: a second
// enqueue while one is queued or running is a duplicate.
type PurgeArgs struct{}

// Kind implements river.JobArgs.
func (PurgeArgs) Kind() string { return KindPurge }

// InsertOpts implements river.JobArgsWithInsertOpts.
func (PurgeArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{UniqueOpts: river.UniqueOpts{ByState: []rivertype.JobState{
		rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRunning,
		rivertype.JobStateRetryable, rivertype.JobStateScheduled,
	}}}
}

// Execer runs a statement: *pgxpool.Pool is one.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// PurgeWorker works PurgeArgs.
type PurgeWorker struct {
	river.WorkerDefaults[PurgeArgs]
	DB Execer
}

// Work implements river.Worker.
func (w *PurgeWorker) Work(ctx context.Context, _ *river.Job[PurgeArgs]) error {
	_, err := Purge(ctx, w.DB)
	return err
}

// Purge deletes every key past its lifetime, in batches so that no statement
// holds many locks, and returns how many it deleted. Expiry only forgets a
// stored response: what the request did (a payment, say) stays, and the
// handler decides what a retry after expiry gets.
func Purge(ctx context.Context, db Execer) (int64, error) {
	var total int64
	for {
		tag, err := db.Exec(ctx, `
			DELETE FROM idempotency_keys
			WHERE (principal, key) IN (
				SELECT principal, key FROM idempotency_keys WHERE expires_at <= now() LIMIT $1
				FOR UPDATE SKIP LOCKED)`, PurgeBatchSize)
		if err != nil {
			return total, fmt.Errorf("purging expired idempotency keys: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < PurgeBatchSize {
			return total, nil
		}
	}
}

// PeriodicPurge is the periodic job that runs the purge every interval (and
// once at start), to add to runner.Config.PeriodicJobs.
func PeriodicPurge(interval time.Duration) *river.PeriodicJob {
	if interval <= 0 {
		interval = PurgeIntervalDefault
	}
	return river.NewPeriodicJob(river.PeriodicInterval(interval),
		func() (river.JobArgs, *river.InsertOpts) { return PurgeArgs{}, nil },
		&river.PeriodicJobOpts{RunOnStart: true})
}
