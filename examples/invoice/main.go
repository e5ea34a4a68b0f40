// Command invoice is the README's complete program: your own job kind,
// enqueued in the same transaction as the business write, worked with its
// effect and its completion in one transaction.
//
// It expects your table, created by your own migrations:
//
//	CREATE TABLE orders (id bigint PRIMARY KEY, invoiced bool NOT NULL DEFAULT false);
package main

import (
	"context"
	"errors"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/pgonce/pgonce/runner"
	"github.com/pgonce/pgonce/schema"
)

// InvoiceArgs is your job kind. Only fields marked river:"unique" make the unique key.
type InvoiceArgs struct {
	OrderID int64 `json:"order_id" river:"unique"`
}

func (InvoiceArgs) Kind() string { return "send_invoice" }

func (InvoiceArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

type InvoiceWorker struct {
	river.WorkerDefaults[InvoiceArgs]
	Pool *pgxpool.Pool
}

// Work locks, checks, acts and completes the job in one transaction.
func (w *InvoiceWorker) Work(ctx context.Context, job *river.Job[InvoiceArgs]) error {
	return runner.WorkTx(ctx, w.Pool, job, func(ctx context.Context, tx pgx.Tx) error {
		var invoiced bool
		err := tx.QueryRow(ctx, `SELECT invoiced FROM orders WHERE id = $1 FOR UPDATE`, job.Args.OrderID).Scan(&invoiced)
		if err != nil || invoiced {
			return err // done already: complete the job, do nothing twice
		}
		_, err = tx.Exec(ctx, `UPDATE orders SET invoiced = true WHERE id = $1`, job.Args.OrderID)
		return err
	})
}

func main() {
	if err := run(context.Background()); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context) error {
	pool, err := runner.NewPool(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	defer pool.Close()
	// River's tables and pgonce's, through goose (or run `runner migrate up`).
	if _, err := schema.UpPool(ctx, pool); err != nil {
		return err
	}

	workers := river.NewWorkers()
	river.AddWorker(workers, &InvoiceWorker{Pool: pool})
	r, err := runner.New(pool, &runner.Config{Workers: workers})
	if err != nil {
		return err
	}
	if err := r.Start(ctx); err != nil {
		return err
	}
	defer func() {
		// Running jobs get the shutdown budget; what does not finish goes
		// back to the queue without using an attempt.
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := r.Stop(stopCtx); err != nil {
			log.Print(err)
		}
	}()

	// The business write and its job commit together, or neither does.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders (id) VALUES ($1) ON CONFLICT DO NOTHING`, 42); err != nil {
			return err
		}
		res, err := r.Enqueue(ctx, tx, InvoiceArgs{OrderID: 42}, nil)
		if err != nil {
			return err
		}
		log.Printf("job %d, duplicate: %v", res.JobID, res.Duplicate)
		return nil
	})
	if err != nil {
		return err
	}

	// A real app keeps serving; this one waits for its order's invoice.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var invoiced bool
		if err := pool.QueryRow(ctx, `SELECT invoiced FROM orders WHERE id = 42`).Scan(&invoiced); err != nil {
			return err
		}
		if invoiced {
			log.Print("order 42 invoiced")
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("order 42 not invoiced after 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
