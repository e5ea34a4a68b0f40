package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/internal/app"
	"github.com/pgonce/pgonce/internal/smtpsink"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/mailer"
	"github.com/pgonce/pgonce/payment"
	"github.com/pgonce/pgonce/runner"
	"github.com/pgonce/pgonce/signup"
)

// runnerTxWorker is bare River's transactional worker written with the
// runner: the same insert, through runner.WorkTx, on a Group (group commit)
// or on the pool.
type runnerTxWorker struct {
	river.WorkerDefaults[TxArgs]
	db runner.Beginner
}

func (w *runnerTxWorker) Work(ctx context.Context, job *river.Job[TxArgs]) error {
	return runner.WorkTx(ctx, w.db, job, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO bench_effects (job_id, n) VALUES ($1, $2)`, job.ID, job.Args.N)
		return err
	})
}

// product measures the runner's own job kinds end to end.
func (b *bench) product(ctx context.Context) error {
	if err := b.runnerTx(ctx, true); err != nil {
		return err
	}
	if err := b.runnerTx(ctx, false); err != nil {
		return err
	}
	if _, err := b.welcomeEmails(ctx, "welcome_email", "product", "", nil); err != nil {
		return err
	}
	return b.payments(ctx)
}

func (b *bench) runnerTx(ctx context.Context, group bool) error {
	d, err := b.newDB(ctx, "runner")
	if err != nil {
		return err
	}
	defer d.Close()
	key, name := "runner_tx", "runner, transactional worker (same insert, WorkTx, group commit)"
	var txDB runner.Beginner = d.Pool
	if group {
		g, err := runner.NewGroup(d.Pool, nil)
		if err != nil {
			return err
		}
		txDB = g
	} else {
		key, name = "runner_tx_nogroup", "runner, transactional worker, group commit off"
	}
	lat := newLatencies()
	workers := river.NewWorkers()
	river.AddWorker(workers, &runnerTxWorker{db: txDB})
	rc := &runner.Config{
		Workers: workers, Logger: b.cfg.Logger, Middleware: []rivertype.Middleware{&doneMiddleware{lat: lat}},
	}
	r, err := runner.New(d.Pool, rc)
	if err != nil {
		return err
	}
	_, err = b.runJobs(ctx, &jobRun{
		key: key, section: "product", name: name, kind: TxArgs{}.Kind(), pool: d.Pool, n: b.cfg.Jobs, lat: lat,
		enqueue: func(ctx context.Context, i int) (int64, error) {
			return businessTx(ctx, d.Pool, i, func(tx pgx.Tx, orderID int64) (int64, error) {
				res, err := r.Enqueue(ctx, tx, TxArgs{N: orderID}, nil)
				if err != nil {
					return 0, err
				}
				return res.JobID, nil
			})
		},
		start: r.Start,
		stop:  r.Stop,
	})
	return err
}

// welcomeEmails signs users up (each a transaction that creates the user
// and enqueues the email) and sends their welcome emails over SMTP to an
// in-process sink. prepare, when set, runs on the database first.
func (b *bench) welcomeEmails(ctx context.Context, key, section, note string, prepare func(context.Context, *db) error) (*Result, error) {
	d, err := b.newDB(ctx, "email")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	if prepare != nil {
		if err := prepare(ctx, d); err != nil {
			return nil, err
		}
	}
	sink, sender, err := startSink()
	if err != nil {
		return nil, err
	}
	defer sink.Close()
	lat := newLatencies()
	a, err := app.New(&app.Options{
		Pool: d.Pool, Mailer: sender, MailDomain: jobs.DomainDefault, Logger: b.cfg.Logger, AllowAnonymous: true,
		Runner: runner.Config{Logger: b.cfg.Logger, Middleware: []rivertype.Middleware{&doneMiddleware{lat: lat}}},
	})
	if err != nil {
		return nil, err
	}
	n := max(b.cfg.Jobs/2, 100)
	res, err := b.runJobs(ctx, &jobRun{
		key: key, section: section, name: "welcome emails: signup transaction, SMTP send, two transactions", note: note,
		kind: jobs.KindWelcomeEmail, pool: d.Pool, n: n, lat: lat,
		enqueue: func(ctx context.Context, i int) (int64, error) {
			var jobID int64
			err := pgx.BeginFunc(ctx, d.Pool, func(tx pgx.Tx) error {
				res, err := signup.Signup(ctx, tx, a.Runner, fmt.Sprintf("user%d@bench.example", i), "Bench User", jobs.DomainDefault)
				if err != nil {
					return err
				}
				jobID = res.WelcomeEmail.JobID
				return nil
			})
			return jobID, err
		},
		start: a.Runner.Start,
		stop:  a.Runner.Stop,
	})
	if err != nil {
		return nil, err
	}
	// The figures stand only if every email went out exactly once.
	var users, sent int
	if err := d.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM users WHERE email LIKE '%@bench.example'),
		(SELECT count(*) FROM email_log WHERE status = 'sent' AND message_id LIKE '%@`+jobs.DomainDefault+`')`).Scan(&users, &sent); err != nil {
		return nil, err
	}
	if msgs := len(sink.Messages()); users != sent || msgs != sent {
		return nil, fmt.Errorf("welcome emails: %d users, %d sent in email_log, %d messages at the sink", users, sent, msgs)
	}
	return res, nil
}

// payments creates payments (each a transaction that writes the payment and
// enqueues its job) and charges them through the reference gateway over
// HTTP on loopback.
func (b *bench) payments(ctx context.Context) error {
	d, err := b.newDB(ctx, "payment")
	if err != nil {
		return err
	}
	defer d.Close()
	gw := gateway.NewServer()
	defer gw.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	httpSrv := &http.Server{Handler: gw, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = httpSrv.Serve(l) }()
	defer httpSrv.Close()
	client, err := gateway.NewClient("http://"+l.Addr().String(), &gateway.ClientOpts{
		Transport: &http.Transport{MaxIdleConnsPerHost: 128, MaxIdleConns: 128, IdleConnTimeout: time.Minute},
	})
	if err != nil {
		return err
	}
	sink, sender, err := startSink()
	if err != nil {
		return err
	}
	defer sink.Close()
	lat := newLatencies()
	a, err := app.New(&app.Options{
		Pool: d.Pool, Mailer: sender, Gateway: client, MailDomain: jobs.DomainDefault, Logger: b.cfg.Logger, AllowAnonymous: true,
		Runner: runner.Config{Logger: b.cfg.Logger, Middleware: []rivertype.Middleware{&doneMiddleware{lat: lat}}},
	})
	if err != nil {
		return err
	}
	n := max(b.cfg.Jobs/2, 100)
	_, err = b.runJobs(ctx, &jobRun{
		key: "process_payment", section: "product", name: "payments: payment transaction, gateway call, two transactions",
		kind: jobs.KindProcessPayment, pool: d.Pool, n: n, lat: lat,
		enqueue: func(ctx context.Context, i int) (int64, error) {
			var jobID int64
			err := pgx.BeginFunc(ctx, d.Pool, func(tx pgx.Tx) error {
				res, err := jobs.SubmitPayment(ctx, a.Runner, tx, &payment.Request{
					ClientID: "bench", IdempotencyKey: fmt.Sprintf("key-%d", i), OrderID: fmt.Sprintf("order-%d", i),
					AmountMinor: int64(100 + i%5000), Currency: "EUR",
				}, 0)
				if err != nil {
					return err
				}
				jobID = res.Job.JobID
				return nil
			})
			return jobID, err
		},
		start: a.Runner.Start,
		stop:  a.Runner.Stop,
	})
	if err != nil {
		return err
	}
	var completed int
	if err := d.Pool.QueryRow(ctx, `SELECT count(*) FROM payments WHERE status = 'completed'`).Scan(&completed); err != nil {
		return err
	}
	if charges := len(gw.Ledger()); charges != completed {
		return fmt.Errorf("payments: %d completed, %d gateway charges", completed, charges)
	}
	return nil
}

// startSink starts an SMTP sink on loopback and a sender that delivers to it.
func startSink() (*smtpsink.Sink, *mailer.SMTP, error) {
	sink, err := smtpsink.Start()
	if err != nil {
		return nil, nil, err
	}
	sender, err := mailer.NewSMTP(sink.URL())
	if err != nil {
		_ = sink.Close()
		return nil, nil, err
	}
	return sink, sender, nil
}
