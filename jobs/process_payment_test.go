package jobs_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/payment"
	"github.com/pgonce/pgonce/runner"
)

type payFixture struct {
	db      *testdb.DB
	gw      *gateway.Server
	client  gateway.Gateway
	runner  *runner.Runner
	workers *river.Workers
}

type payOpts struct {
	retry       *runner.Backoff
	wrap        func(gateway.Gateway) gateway.Gateway
	conns       int32
	maxAttempts int
	timeout     time.Duration
}

func setupPayments(t *testing.T, o *payOpts) *payFixture {
	t.Helper()
	if o == nil {
		o = &payOpts{}
	}
	db := testdb.New(t, &testdb.Opts{MaxConns: o.conns})
	gw := gateway.NewServer()
	hs := httptest.NewServer(gw)
	t.Cleanup(func() { gw.Close(); hs.Close() })
	timeout := o.timeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	var client gateway.Gateway
	client, err := gateway.NewClient(hs.URL, &gateway.ClientOpts{Timeout: timeout})
	require.NoError(t, err)
	if o.wrap != nil {
		client = o.wrap(client)
	}
	_, smtp := newSink(t) // so the email queue works too (SC-7)
	workers := river.NewWorkers()
	require.NoError(t, jobs.Register(workers, &jobs.Deps{Pool: db.Pool, Mailer: smtp, Gateway: client}))
	retry := o.retry
	if retry == nil {
		retry = &runner.Backoff{Min: 20 * time.Millisecond, Max: 50 * time.Millisecond}
	}
	r, err := runner.New(db.Pool, &runner.Config{
		Workers: workers, Queues: jobs.Queues(nil), RetryPolicy: retry, MaxAttempts: o.maxAttempts, Logger: warnLogger,
		FetchPollInterval: 50 * time.Millisecond, // snoozed jobs become due without an insert notification
	})
	require.NoError(t, err)
	return &payFixture{db: db, gw: gw, client: client, runner: r, workers: workers}
}

func (f *payFixture) start(t *testing.T) {
	t.Helper()
	require.NoError(t, f.runner.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = f.runner.Stop(ctx)
	})
}

func (f *payFixture) submit(t *testing.T, key, order string, amount int64) *jobs.PaymentResult {
	t.Helper()
	res, err := f.trySubmit(context.Background(), key, order, amount, 0)
	require.NoError(t, err)
	return res
}

func (f *payFixture) trySubmit(ctx context.Context, key, order string, amount int64, maxAttempts int) (*jobs.PaymentResult, error) {
	var res *jobs.PaymentResult
	err := pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error {
		var err error
		res, err = jobs.SubmitPayment(ctx, f.runner, tx, &payment.Request{
			ClientID: "shop", IdempotencyKey: key, OrderID: order, AmountMinor: amount, Currency: "EUR",
		}, maxAttempts)
		return err
	})
	return res, err
}

func (f *payFixture) payment(t *testing.T, id int64) *payment.Payment {
	t.Helper()
	p, err := payment.Get(context.Background(), f.db.Pool, "shop", id)
	require.NoError(t, err)
	return p
}

func (f *payFixture) waitStatus(t *testing.T, id int64, status string) *payment.Payment {
	t.Helper()
	waitFor(t, 15*time.Second, "payment "+status, func() bool { return f.payment(t, id).Status == status })
	return f.payment(t, id)
}

func (f *payFixture) jobState(t *testing.T, id int64) string {
	t.Helper()
	var s string
	require.NoError(t, f.db.Pool.QueryRow(context.Background(), `SELECT state::text FROM river_job WHERE id = $1`, id).Scan(&s))
	return s
}

func (f *payFixture) charges(key string) (succeeded, declined int) {
	for _, c := range f.gw.Ledger() {
		if c.IdempotencyKey != key {
			continue
		}
		if c.Status == gateway.StatusSucceeded {
			succeeded++
		} else {
			declined++
		}
	}
	return succeeded, declined
}

func TestProcessPayment_Charges(t *testing.T) {
	t.Parallel()
	f := setupPayments(t, nil)
	f.start(t)
	res := f.submit(t, "k1", "order-1", 1999)
	require.True(t, res.Created)
	require.False(t, res.Job.Duplicate)
	p := f.waitStatus(t, res.Payment.ID, payment.StatusCompleted)
	require.NotNil(t, p.ChargeID)
	require.Equal(t, 1, p.Attempts)
	require.Equal(t, res.Job.JobID, *p.JobID)
	ok, _ := f.charges(p.GatewayKey)
	require.Equal(t, 1, ok)
	waitFor(t, 5*time.Second, "job completed", func() bool { return f.jobState(t, res.Job.JobID) == "completed" })

	// The same submission again: the same payment, nothing more to do.
	again := f.submit(t, "k1", "order-1", 1999)
	require.False(t, again.Created)
	require.Equal(t, p.ID, again.Payment.ID)
	require.Nil(t, again.Job, "a final payment needs no job")
}

// SC-1 with process_payment: 50 transactions at once write the payment for
// order 42 and enqueue its processing; 100 rounds.
func TestProcessPayment_ConcurrentSubmissions(t *testing.T) {
	t.Parallel()
	const goroutines, rounds = 50, 100
	f := setupPayments(t, &payOpts{conns: goroutines})
	ctx := context.Background()
	for round := range rounds {
		var (
			wg      sync.WaitGroup
			gate    = make(chan struct{})
			results = make([]*jobs.PaymentResult, goroutines)
			errs    = make([]error, goroutines)
		)
		for i := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				results[i], errs[i] = f.trySubmit(ctx, fmt.Sprintf("key-%d", round), fmt.Sprintf("order-42-%d", round), 4200, 0)
			}()
		}
		close(gate)
		wg.Wait()
		inserted := 0
		for i := range goroutines {
			require.NoError(t, errs[i])
			require.Equal(t, results[0].Payment.ID, results[i].Payment.ID)
			require.Equal(t, results[0].Job.JobID, results[i].Job.JobID)
			if !results[i].Job.Duplicate {
				inserted++
			}
		}
		require.Equal(t, 1, inserted)
	}
	require.Equal(t, rounds, count(t, f.db.Pool, `SELECT count(*) FROM payments`))
	require.Equal(t, rounds, count(t, f.db.Pool, `SELECT count(*) FROM river_job WHERE kind = 'process_payment'`))
}

// The gateway charges and its answer never arrives; the retry with the same
// key gets the charge that was made: one charge, payment completed.
func TestProcessPayment_TimeoutAfterCharge(t *testing.T) {
	t.Parallel()
	f := setupPayments(t, &payOpts{timeout: 200 * time.Millisecond})
	f.gw.InjectNext(gateway.FaultTimeoutAfterCharge)
	f.start(t)
	res := f.submit(t, "k1", "order-1", 1999)
	p := f.waitStatus(t, res.Payment.ID, payment.StatusCompleted)
	require.Equal(t, 2, p.Attempts)
	ok, _ := f.charges(p.GatewayKey)
	require.Equal(t, 1, ok)
	require.Equal(t, f.gw.Ledger()[0].ID, *p.ChargeID)
}

// crashAfterCharge makes the charge and then panics before the worker can
// commit, as a worker killed between the gateway call and the commit would.
type crashAfterCharge struct {
	next    gateway.Gateway
	crashed atomic.Bool
}

func (c *crashAfterCharge) Charge(ctx context.Context, req *gateway.ChargeRequest) (*gateway.Charge, error) {
	ch, err := c.next.Charge(ctx, req)
	if err == nil && c.crashed.CompareAndSwap(false, true) {
		panic("simulated crash between gateway call and commit")
	}
	return ch, err
}

func TestProcessPayment_CrashBetweenChargeAndCommit(t *testing.T) {
	t.Parallel()
	f := setupPayments(t, &payOpts{wrap: func(g gateway.Gateway) gateway.Gateway { return &crashAfterCharge{next: g} }})
	f.start(t)
	res := f.submit(t, "k1", "order-1", 1999)
	p := f.waitStatus(t, res.Payment.ID, payment.StatusCompleted)
	ok, _ := f.charges(p.GatewayKey)
	require.Equal(t, 1, ok, "the gateway recognised the retry's key")
	require.Equal(t, 1, f.gw.Stats().Replays)
}

// Declines are final: the payment fails, the job completes, no retry.
func TestProcessPayment_DeclineIsFinal(t *testing.T) {
	t.Parallel()
	f := setupPayments(t, nil)
	f.gw.InjectNext(gateway.FaultDecline)
	f.start(t)
	res := f.submit(t, "k1", "order-1", 1999)
	p := f.waitStatus(t, res.Payment.ID, payment.StatusFailed)
	require.Equal(t, "card_declined", *p.FailureCode)
	waitFor(t, 5*time.Second, "job completed", func() bool { return f.jobState(t, res.Job.JobID) == "completed" })
	require.Equal(t, 1, f.gw.Stats().Requests)
	ok, declined := f.charges(p.GatewayKey)
	require.Zero(t, ok)
	require.Equal(t, 1, declined)
}

// Transient failures are recorded and retried with the same key.
func TestProcessPayment_TransientRetried(t *testing.T) {
	t.Parallel()
	f := setupPayments(t, nil)
	f.gw.InjectNext(gateway.FaultServerError, gateway.FaultServerError)
	f.start(t)
	res := f.submit(t, "k1", "order-1", 1999)
	p := f.waitStatus(t, res.Payment.ID, payment.StatusCompleted)
	require.Equal(t, 3, p.Attempts)
	var attempt int
	require.NoError(t, f.db.Pool.QueryRow(context.Background(), `SELECT attempt FROM river_job WHERE id = $1`, res.Job.JobID).Scan(&attempt))
	require.Equal(t, 3, attempt)
	ok, _ := f.charges(p.GatewayKey)
	require.Equal(t, 1, ok)
}

// SC-3 (b) for payments: the job is discarded after its last attempt (the
// payment stays processing); a fresh duplicate is enqueued; an operator
// retries the discarded job: a typed conflict, the live job untouched, one
// payment and one charge.
func TestProcessPayment_RetryDiscardedWhileLiveDuplicate(t *testing.T) {
	t.Parallel()
	f := setupPayments(t, nil)
	f.gw.InjectNext(gateway.FaultServerError)
	f.start(t)
	first, err := f.trySubmit(context.Background(), "k1", "order-1", 1999, 1)
	require.NoError(t, err)
	waitFor(t, 10*time.Second, "job discarded", func() bool { return f.jobState(t, first.Job.JobID) == "discarded" })
	p := f.payment(t, first.Payment.ID)
	require.Equal(t, payment.StatusProcessing, p.Status)
	require.NotNil(t, p.LastError)

	// The client's retry (say, after its key's stored answer expired)
	// revives the payment with a fresh job.
	fresh := f.submit(t, "k1", "order-1", 1999)
	require.Equal(t, first.Payment.ID, fresh.Payment.ID)
	require.False(t, fresh.Job.Duplicate)

	_, err = f.runner.RetryJob(context.Background(), first.Job.JobID)
	var dup *runner.DuplicateJobError
	require.ErrorAs(t, err, &dup) // running, or completed: either holds the key
	require.Equal(t, fresh.Job.JobID, dup.LiveJobID)
	require.Equal(t, "discarded", f.jobState(t, first.Job.JobID))

	p = f.waitStatus(t, first.Payment.ID, payment.StatusCompleted)
	ok, _ := f.charges(p.GatewayKey)
	require.Equal(t, 1, ok)
	require.Equal(t, 1, count(t, f.db.Pool, `SELECT count(*) FROM payments`))
}

// SC-7: a payment job fails and waits an hour for its retry; a duplicate due
// in 1 s is enqueued; an unrelated queue keeps working. Nothing wedges: the
// duplicate is reported, the other queue works, and once the retry is due
// (an operator's retry here) there is one payment and one charge.
func TestProcessPayment_LongRetryDoesNotWedge(t *testing.T) {
	t.Parallel()
	f := setupPayments(t, &payOpts{retry: &runner.Backoff{Min: time.Hour, Max: time.Hour}})
	f.gw.InjectNext(gateway.FaultServerError)
	f.start(t)
	ctx := context.Background()
	res := f.submit(t, "k1", "order-1", 1999)
	waitFor(t, 10*time.Second, "job waiting for its retry", func() bool { return f.jobState(t, res.Job.JobID) == "retryable" })

	var dup *runner.EnqueueResult
	require.NoError(t, pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error {
		var err error
		dup, err = f.runner.Enqueue(ctx, tx, jobs.ProcessPaymentArgs{PaymentID: res.Payment.ID}, &river.InsertOpts{ScheduledAt: time.Now().Add(time.Second)})
		return err
	}))
	require.True(t, dup.Duplicate)
	require.Equal(t, res.Job.JobID, dup.JobID)

	// An unrelated queue keeps working meanwhile.
	var welcome *runner.EnqueueResult
	require.NoError(t, pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error {
		var userID int64
		if err := tx.QueryRow(ctx, `INSERT INTO users (email) VALUES ('other@example.com') RETURNING id`).Scan(&userID); err != nil {
			return err
		}
		var err error
		welcome, err = jobs.EnqueueWelcomeEmail(ctx, f.runner, tx, userID, "welcome", jobs.DomainDefault)
		return err
	}))
	waitFor(t, 10*time.Second, "the email queue works", func() bool { return f.jobState(t, welcome.JobID) == "completed" })
	require.Equal(t, "retryable", f.jobState(t, res.Job.JobID))

	_, err := f.runner.RetryJob(ctx, res.Job.JobID)
	require.NoError(t, err)
	p := f.waitStatus(t, res.Payment.ID, payment.StatusCompleted)
	ok, _ := f.charges(p.GatewayKey)
	require.Equal(t, 1, ok)
	require.Equal(t, 1, count(t, f.db.Pool, `SELECT count(*) FROM river_job WHERE kind = 'process_payment'`))
}

// SC-7 variant: a job snoozed 30 times (the gateway rate-limits it) uses no
// attempt, and ends with one charge.
func TestProcessPayment_SnoozesUseNoAttempts(t *testing.T) {
	t.Parallel()
	f := setupPayments(t, &payOpts{maxAttempts: 2})
	faults := make([]gateway.Fault, 30)
	for i := range faults {
		faults[i] = gateway.FaultRateLimit
	}
	f.gw.InjectNext(faults...)
	f.start(t)
	res, err := f.trySubmit(context.Background(), "k1", "order-1", 1999, 2)
	require.NoError(t, err)
	p := f.waitStatus(t, res.Payment.ID, payment.StatusCompleted)
	require.Equal(t, 31, p.Attempts, "every gateway call counts, the 30 rate-limited ones too")
	var attempt int
	var snoozes int64
	require.NoError(t, f.db.Pool.QueryRow(context.Background(),
		`SELECT attempt, (metadata->>'snoozes')::bigint FROM river_job WHERE id = $1`, res.Job.JobID).Scan(&attempt, &snoozes))
	require.Equal(t, 1, attempt)
	require.EqualValues(t, 30, snoozes)
	ok, _ := f.charges(p.GatewayKey)
	require.Equal(t, 1, ok)
}
