package bench

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/pgonce/pgonce/runner"
)

// NoopArgs is the bare River baseline's no-op job.
type NoopArgs struct {
	N int64 `json:"n"`
}

func (NoopArgs) Kind() string { return "bench_noop" }

type noopWorker struct {
	river.WorkerDefaults[NoopArgs]
}

func (*noopWorker) Work(context.Context, *river.Job[NoopArgs]) error { return nil }

// TxArgs is the transactional job of the baseline and of the runner: its
// effect is one row in bench_effects, committed with its completion.
type TxArgs struct {
	N int64 `json:"n"`
}

func (TxArgs) Kind() string { return "bench_tx" }

// riverTxWorker is the transactional pattern written against River alone:
// begin, insert the effect, JobCompleteTx, commit.
type riverTxWorker struct {
	river.WorkerDefaults[TxArgs]
	pool *pgxpool.Pool
}

func (w *riverTxWorker) Work(ctx context.Context, job *river.Job[TxArgs]) error {
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	if _, err := tx.Exec(ctx, `INSERT INTO bench_effects (job_id, n) VALUES ($1, $2)`, job.ID, job.Args.N); err != nil {
		return err
	}
	if _, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// bareRiver measures River on its own, with the pool size and fetch settings
// the runner uses.
func (b *bench) bareRiver(ctx context.Context) error {
	for _, sc := range []struct {
		key, name string
		args      func(i int) river.JobArgs
		kind      string
	}{
		{"river_noop", "bare River, no-op worker", func(i int) river.JobArgs { return NoopArgs{N: int64(i)} }, NoopArgs{}.Kind()},
		{"river_tx", "bare River, transactional worker (insert + JobCompleteTx)", func(i int) river.JobArgs { return TxArgs{N: int64(i)} }, TxArgs{}.Kind()},
	} {
		d, err := b.newDB(ctx, "river")
		if err != nil {
			return err
		}
		lat := newLatencies()
		workers := river.NewWorkers()
		river.AddWorker(workers, &noopWorker{})
		river.AddWorker(workers, &riverTxWorker{pool: d.Pool})
		client, err := river.NewClient(riverpgxv5.New(d.Pool), &river.Config{
			Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: runner.MaxWorkersDefault}},
			FetchCooldown:     runner.FetchCooldownDefault,
			FetchPollInterval: runner.FetchPollIntervalDefault,
			Workers:           workers,
			Logger:            b.cfg.Logger,
			Middleware:        []rivertype.Middleware{&doneMiddleware{lat: lat}},
		})
		if err != nil {
			d.Close()
			return err
		}
		_, err = b.runJobs(ctx, &jobRun{
			key: sc.key, section: "river", name: sc.name, kind: sc.kind, pool: d.Pool, n: b.cfg.Jobs, lat: lat,
			enqueue: func(ctx context.Context, i int) (int64, error) {
				return businessTx(ctx, d.Pool, i, func(tx pgx.Tx, _ int64) (int64, error) {
					res, err := client.InsertTx(ctx, tx, sc.args(i), nil)
					if err != nil {
						return 0, err
					}
					return res.Job.ID, nil
				})
			},
			start: func(ctx context.Context) error { return client.Start(ctx) },
			stop:  func(ctx context.Context) error { return client.Stop(ctx) },
			// The no-op worker's completion is recorded later, in batches:
			// the end of its work is not the job's completion.
			skipLatency: sc.key == "river_noop",
		})
		d.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", sc.name, err)
		}
	}
	return nil
}
