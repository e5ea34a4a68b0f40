package runner

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

var (
	// ErrInvalidConfig wraps every validation failure of New.
	ErrInvalidConfig = errors.New("runner: invalid config")

	// ErrTxConflict is returned when PostgreSQL aborted the caller's
	// transaction to resolve a conflict (serialization failure 40001 or
	// deadlock 40P01). Roll back and run the whole transaction again.
	// Enqueueing in READ COMMITTED, PostgreSQL's default, never needs it for a
	// duplicate: a concurrent duplicate waits for the first insert's commit
	// and is then reported as Duplicate.
	ErrTxConflict = errors.New("runner: transaction conflict, retry the transaction")

	// ErrJobNotRunning is returned by WorkTx when the job was no longer
	// running at completion: it was rescued, cancelled or requeued by a
	// shutdown while this attempt ran. The transaction was rolled back, so the
	// attempt's effect is undone and the job's next run will redo it.
	ErrJobNotRunning = errors.New("runner: job is no longer running; effect rolled back")

	// ErrJobNotFound is returned for a job id that does not exist.
	ErrJobNotFound = errors.New("runner: job not found")
)

// DuplicateJobError is returned by RetryJob when running the job again would
// make a second live copy of a unique job: another job with the same unique
// key is already queued, running or done. Nothing was changed.
type DuplicateJobError struct {
	JobID     int64 // the job asked to retry
	LiveJobID int64 // the job holding the unique key
	LiveState string
}

func (e *DuplicateJobError) Error() string {
	return fmt.Sprintf("runner: job %d duplicates live job %d (%s) with the same unique key", e.JobID, e.LiveJobID, e.LiveState)
}

// ShutdownError is returned by Stop when jobs ignored cancellation past the
// budget and were put back in the queue without using up an attempt.
type ShutdownError struct {
	Requeued []int64
}

func (e *ShutdownError) Error() string {
	return fmt.Sprintf("runner: %d job(s) did not stop within the shutdown budget and were requeued: %v", len(e.Requeued), e.Requeued)
}

// pgCode returns the SQLSTATE of err, or "".
func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// translate maps PostgreSQL errors that callers act on to this package's
// sentinels, keeping the cause.
func translate(err error) error {
	switch pgCode(err) {
	case "40001", "40P01":
		return fmt.Errorf("%w: %w", ErrTxConflict, err)
	}
	return err
}
