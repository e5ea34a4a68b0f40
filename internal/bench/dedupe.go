package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/pgonce/pgonce/runner"
)

// PlainArgs is a job kind without uniqueness.
type PlainArgs struct {
	N int64 `json:"n"`
}

func (PlainArgs) Kind() string { return "bench_plain" }

// UniqueArgs is a job kind unique by its key.
type UniqueArgs struct {
	Key string `json:"key" river:"unique"`
}

func (UniqueArgs) Kind() string { return "bench_unique" }

func (UniqueArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

// dedupe measures enqueueing, each call its own transaction: a plain job,
// a unique job with a new key, and a unique job whose key a live job holds
// (the duplicate is reported with that job's id).
func (b *bench) dedupe(ctx context.Context) error {
	d, err := b.newDB(ctx, "dedupe")
	if err != nil {
		return err
	}
	defer d.Close()
	r, err := runner.New(d.Pool, &runner.Config{InsertOnly: true, Logger: b.cfg.Logger})
	if err != nil {
		return err
	}
	enqueue := func(ctx context.Context, args river.JobArgs) (*runner.EnqueueResult, error) {
		var res *runner.EnqueueResult
		err := pgx.BeginFunc(ctx, d.Pool, func(tx pgx.Tx) error {
			var err error
			res, err = r.Enqueue(ctx, tx, args, nil)
			return err
		})
		return res, err
	}
	var newKeys atomic.Int64
	var wrong atomic.Int64
	phases := []struct {
		key, name string
		call      func(ctx context.Context, i int64) error
	}{
		{"enqueue_plain", "plain enqueue (no uniqueness)", func(ctx context.Context, i int64) error {
			_, err := enqueue(ctx, PlainArgs{N: i})
			return err
		}},
		{"enqueue_unique_new", "unique enqueue, new key", func(ctx context.Context, i int64) error {
			res, err := enqueue(ctx, UniqueArgs{Key: "k" + strconv.FormatInt(i, 10)})
			if err == nil {
				newKeys.Add(1)
				if res.Duplicate {
					wrong.Add(1)
				}
			}
			return err
		}},
		{"enqueue_duplicate", "unique enqueue, duplicate key (reported with the job id)", func(ctx context.Context, i int64) error {
			// Consecutive calls go to different goroutines: different keys.
			res, err := enqueue(ctx, UniqueArgs{Key: "k" + strconv.FormatInt(i%newKeys.Load(), 10)})
			if err == nil && (!res.Duplicate || res.JobID == 0) {
				wrong.Add(1)
			}
			return err
		}},
		{"enqueue_duplicate_hot", "unique enqueue, every client the same duplicate key", func(ctx context.Context, _ int64) error {
			res, err := enqueue(ctx, UniqueArgs{Key: "k0"})
			if err == nil && !res.Duplicate {
				wrong.Add(1)
			}
			return err
		}},
	}
	for _, p := range phases {
		res, err := closedLoop(ctx, b.cfg.Clients, b.cfg.Duration, p.call)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		if n := wrong.Load(); n > 0 {
			return fmt.Errorf("%s: %d enqueue(s) reported the wrong outcome", p.name, n)
		}
		b.report.add(&Result{Key: p.key, Section: "dedupe", Name: p.name, Rate: res.Rate(), Unit: "enqueues",
			PerCallUs: toUs(res.Mean()), P50Ms: toMs(res.P(0.5)), P99Ms: toMs(res.P(0.99)),
			MachineCPU: res.CPU.MachineBusy, OwnCPU: res.CPU.OwnCores})
		b.logf("%s: %.0f/s, %s per call", p.name, res.Rate(), res.Mean())
	}
	return nil
}
