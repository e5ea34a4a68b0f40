package runner_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/runner"
)

// InvoiceArgs is your own job kind: send the invoice of an order. It is
// unique by order, so a resubmitted order does not enqueue a second invoice.
type InvoiceArgs struct {
	OrderID int64 `json:"order_id" river:"unique"`
}

func (InvoiceArgs) Kind() string { return "send_invoice" }

func (InvoiceArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

// InvoiceWorker locks the order, returns early if its invoice went out
// already, records the effect and completes the job, all in one transaction.
type InvoiceWorker struct {
	river.WorkerDefaults[InvoiceArgs]
	Pool *pgxpool.Pool
}

func (w *InvoiceWorker) Work(ctx context.Context, job *river.Job[InvoiceArgs]) error {
	return runner.WorkTx(ctx, w.Pool, job, func(ctx context.Context, tx pgx.Tx) error {
		var invoiced bool
		err := tx.QueryRow(ctx, `SELECT invoiced FROM shop_orders WHERE id = $1 FOR UPDATE`, job.Args.OrderID).Scan(&invoiced)
		if err != nil || invoiced {
			return err // nothing to do twice
		}
		// ... produce the invoice, with a key derived from the order id ...
		_, err = tx.Exec(ctx, `UPDATE shop_orders SET invoiced = true WHERE id = $1`, job.Args.OrderID)
		return err
	})
}

// Register your own job kind, enqueue it in the same transaction as the
// business write, and let the runner work it.
func Example() {
	ctx := context.Background()
	db, drop := testdb.ForExample() // in your app: pool, err := runner.NewPool(ctx, os.Getenv("DATABASE_URL"))
	defer drop()
	pool := db.Pool
	if _, err := pool.Exec(ctx, `CREATE TABLE shop_orders (id bigint PRIMARY KEY, invoiced bool NOT NULL DEFAULT false)`); err != nil {
		panic(err)
	}

	workers := river.NewWorkers()
	river.AddWorker(workers, &InvoiceWorker{Pool: pool})
	r, err := runner.New(pool, &runner.Config{
		Workers: workers,
		Logger:  slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		panic(err)
	}
	if err := r.Start(ctx); err != nil {
		panic(err)
	}

	// The order and its invoice job commit together, or neither does.
	placeOrder := func(id int64) *runner.EnqueueResult {
		var res *runner.EnqueueResult
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO shop_orders (id) VALUES ($1) ON CONFLICT DO NOTHING`, id); err != nil {
				return err
			}
			var err error
			res, err = r.Enqueue(ctx, tx, InvoiceArgs{OrderID: id}, nil)
			return err
		})
		if err != nil {
			panic(err)
		}
		return res
	}
	first := placeOrder(42)
	again := placeOrder(42) // a double-click
	fmt.Println("first inserted:", !first.Duplicate)
	fmt.Println("second is a duplicate of the same job:", again.Duplicate && again.JobID == first.JobID)

	for {
		var invoiced bool
		if err := pool.QueryRow(ctx, `SELECT invoiced FROM shop_orders WHERE id = 42`).Scan(&invoiced); err != nil {
			panic(err)
		}
		if invoiced {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("order 42 invoiced")

	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := r.Stop(stopCtx); err != nil {
		panic(err)
	}
	// Output:
	// first inserted: true
	// second is a duplicate of the same job: true
	// order 42 invoiced
}

// GroupInvoiceWorker is InvoiceWorker with its transactions begun on a
// Group: the same code, many jobs per commit.
type GroupInvoiceWorker struct {
	river.WorkerDefaults[InvoiceArgs]
	Group *runner.Group
}

func (w *GroupInvoiceWorker) Work(ctx context.Context, job *river.Job[InvoiceArgs]) error {
	return runner.WorkTx(ctx, w.Group, job, func(ctx context.Context, tx pgx.Tx) error {
		var invoiced bool
		err := tx.QueryRow(ctx, `SELECT invoiced FROM shop_orders WHERE id = $1 FOR UPDATE`, job.Args.OrderID).Scan(&invoiced)
		if err != nil || invoiced {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE shop_orders SET invoiced = true WHERE id = $1`, job.Args.OrderID)
		return err
	})
}

// Commit many jobs' transactions at once: pass a Group instead of the pool to
// WorkTx. Each job still commits its effect and its completion together, in
// its own savepoint, and one job's failure does not touch the others.
func ExampleGroup() {
	ctx := context.Background()
	db, drop := testdb.ForExample() // in your app: pool, err := runner.NewPool(ctx, os.Getenv("DATABASE_URL"))
	defer drop()
	pool := db.Pool
	if _, err := pool.Exec(ctx, `CREATE TABLE shop_orders (id bigint PRIMARY KEY, invoiced bool NOT NULL DEFAULT false)`); err != nil {
		panic(err)
	}

	group, err := runner.NewGroup(pool, nil) // defaults: 8 lanes, up to 32 jobs per commit
	if err != nil {
		panic(err)
	}
	workers := river.NewWorkers()
	river.AddWorker(workers, &GroupInvoiceWorker{Group: group})
	r, err := runner.New(pool, &runner.Config{
		Workers: workers,
		Groups:  []*runner.Group{group}, // so that Stop can end its transactions
		Logger:  slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		panic(err)
	}

	// 500 orders and their jobs, enqueued before the workers start so that
	// they are worked concurrently.
	const orders = 500
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for id := int64(1); id <= orders; id++ {
			if _, err := tx.Exec(ctx, `INSERT INTO shop_orders (id) VALUES ($1)`, id); err != nil {
				return err
			}
			if _, err := r.Enqueue(ctx, tx, InvoiceArgs{OrderID: id}, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		panic(err)
	}
	if err := r.Start(ctx); err != nil {
		panic(err)
	}
	for {
		var left int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state <> 'completed'`).Scan(&left); err != nil {
			panic(err)
		}
		if left == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := r.Stop(stopCtx); err != nil {
		panic(err)
	}

	var invoiced int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM shop_orders WHERE invoiced`).Scan(&invoiced); err != nil {
		panic(err)
	}
	stats := group.Stats()
	fmt.Println("orders invoiced:", invoiced)
	fmt.Println("jobs committed through the group:", stats.Jobs)
	fmt.Println("fewer commits than jobs:", stats.Commits < stats.Jobs)
	// Output:
	// orders invoiced: 500
	// jobs committed through the group: 500
	// fewer commits than jobs: true
}
