// Package runner is a transactional-outbox job runner on PostgreSQL, built on
// River: jobs are enqueued in the caller's transaction, duplicates are
// detected by a unique index and reported with the existing job's id, and
// workers commit their effect and the job's completion in one transaction.
//
// Enqueue with the business write that causes the job:
//
//	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
//		if _, err := tx.Exec(ctx, `INSERT INTO orders ...`); err != nil {
//			return err
//		}
//		res, err := r.Enqueue(ctx, tx, InvoiceArgs{OrderID: 42}, nil)
//		// res.Duplicate, res.JobID
//		return err
//	})
//
// Work with the effect and the completion in one transaction:
//
//	func (w *InvoiceWorker) Work(ctx context.Context, job *river.Job[InvoiceArgs]) error {
//		return runner.WorkTx(ctx, w.Pool, job, func(ctx context.Context, tx pgx.Tx) error {
//			// SELECT ... FOR UPDATE, return early if done, act, record.
//		})
//	}
//
// PostgreSQL pays for durability per commit. Pass a Group instead of the pool
// to WorkTx and many jobs' transactions commit together, each in its own
// savepoint, each job completed with its effect (see Group):
//
//	group, err := runner.NewGroup(pool, nil)
//	// in Work: runner.WorkTx(ctx, group, job, fn)
//
// Stop gives running jobs a budget and puts back in the queue, without using
// an attempt, every job that does not finish in it.
package runner
