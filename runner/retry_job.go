package runner

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river/rivertype"
)

// RetryJob makes a finished or waiting job available to run now (an
// operator's "retry"). A running job is left alone.
//
// For a unique job whose key another live job holds (the job was discarded and
// a fresh duplicate was enqueued since), nothing changes and RetryJob returns a
// *DuplicateJobError naming the live job: two live copies of a unique job
// would be the duplicate effect uniqueness exists to prevent.
func (r *Runner) RetryJob(ctx context.Context, id int64) (*rivertype.JobRow, error) {
	job, err := r.client.JobRetry(ctx, id)
	if err == nil {
		return job, nil
	}
	if errors.Is(err, rivertype.ErrNotFound) {
		return nil, fmt.Errorf("%w: %d", ErrJobNotFound, id)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		var live DuplicateJobError
		live.JobID = id
		qerr := r.pool.QueryRow(ctx, `
			SELECT l.id, l.state::text
			FROM `+r.jobTable+` j
			JOIN `+r.jobTable+` l ON l.unique_key = j.unique_key AND l.id <> j.id
			WHERE j.id = $1
			ORDER BY l.id DESC
			LIMIT 1`, id).Scan(&live.LiveJobID, &live.LiveState)
		if qerr != nil && !errors.Is(qerr, pgx.ErrNoRows) {
			return nil, fmt.Errorf("retrying job %d: %w (finding the live duplicate: %w)", id, err, qerr)
		}
		return nil, &live
	}
	return nil, fmt.Errorf("retrying job %d: %w", id, translate(err))
}
