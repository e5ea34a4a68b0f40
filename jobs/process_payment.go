package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/payment"
	"github.com/pgonce/pgonce/runner"
)

// KindProcessPayment is the job kind of ProcessPaymentArgs.
const KindProcessPayment = "process_payment"

// QueuePayment is the queue payment jobs run in.
const QueuePayment = "payment"

// PaymentMaxAttemptsDefault is how often a payment's charge is tried before
// its job is discarded (the payment then stays processing, with its last
// error, for an operator; the gateway key makes a later retry safe).
const PaymentMaxAttemptsDefault = 10

// ProcessPaymentArgs charges a payment through the gateway.
//
// Dedupe policy: one job per payment, unique by payment_id across queues
// while it is queued, running, retrying or completed. A duplicate is reported
// with the existing job's id. A job enqueued after River deleted a finished
// one finds the payment final and completes without calling the gateway; a
// job discarded before the payment was final can be revived by a new enqueue
// (SubmitPayment does so when the client retries after its key expired).
// The gateway sees one idempotency key per payment on every attempt, so no
// sequence of retries, rescues or duplicates charges twice.
type ProcessPaymentArgs struct {
	PaymentID int64 `json:"payment_id" river:"unique"`
}

// Kind implements river.JobArgs.
func (ProcessPaymentArgs) Kind() string { return KindProcessPayment }

// InsertOpts implements river.JobArgsWithInsertOpts.
func (ProcessPaymentArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{
		Queue:       QueuePayment,
		MaxAttempts: PaymentMaxAttemptsDefault,
		UniqueOpts:  river.UniqueOpts{ByArgs: true},
	}
}

// PaymentResult is what SubmitPayment did.
type PaymentResult struct {
	Payment *payment.Payment
	// Created is false when the client's key already named this payment.
	Created bool
	// Job is the processing job, new or existing; nil for a payment already
	// final (nothing left to process).
	Job *runner.EnqueueResult
}

// SubmitPayment creates the payment req asks for (or finds the one its key
// names) and enqueues its processing, in the caller's transaction. maxAttempts
// of 0 means PaymentMaxAttemptsDefault. Errors are payment's: ErrInvalid,
// ErrKeyReused, *OrderConflictError.
func SubmitPayment(ctx context.Context, r *runner.Runner, tx pgx.Tx, req *payment.Request, maxAttempts int) (*PaymentResult, error) {
	p, created, err := payment.Create(ctx, tx, req)
	if err != nil {
		return nil, err
	}
	res := &PaymentResult{Payment: p, Created: created}
	if p.Final() {
		return res, nil
	}
	opts := &river.InsertOpts{MaxAttempts: maxAttempts}
	if maxAttempts <= 0 {
		opts = nil
	}
	job, err := r.Enqueue(ctx, tx, ProcessPaymentArgs{PaymentID: p.ID}, opts)
	if err != nil {
		return nil, err
	}
	res.Job = job
	if !job.Duplicate {
		if err := payment.SetJob(ctx, tx, p.ID, job.JobID); err != nil {
			return nil, err
		}
		p.JobID = &job.JobID
	}
	return res, nil
}

// ProcessPaymentWorker charges payments.
//
// No transaction stays open across the gateway call (a slow gateway must not
// hold database connections). One transaction locks the payment (SELECT ...
// FOR UPDATE), completes the job at once if the payment is final, else marks
// it processing and counts the attempt. Then the worker calls the gateway
// with the payment's gateway key. A second transaction locks the payment
// again, stores the outcome and, when it is final, completes the job.
// Transient failures (5xx, timeouts, lost connections) are recorded and
// retried with backoff under the same key, so the gateway returns the first
// outcome rather than charging again; declines are final and not retried; a
// rate limit snoozes the job without using a job attempt. Two runs of one
// payment at once (a rescue) both use the same key: one charge.
type ProcessPaymentWorker struct {
	river.WorkerDefaults[ProcessPaymentArgs]

	Pool *pgxpool.Pool
	// TxDB begins the worker's two transactions: a *runner.Group to commit
	// many jobs' transactions together. Defaults to Pool.
	TxDB    runner.Beginner
	Gateway gateway.Gateway
}

func (w *ProcessPaymentWorker) txDB() runner.Beginner {
	if w.TxDB != nil {
		return w.TxDB
	}
	return w.Pool
}

// NoGatewaySnooze is how long a payment job waits when the runner that took
// it has no gateway configured.
const NoGatewaySnooze = time.Minute

// errCall ends the first transaction: commit the attempt, then call.
var errCall = errors.New("marked processing; call the gateway")

// Work implements river.Worker.
func (w *ProcessPaymentWorker) Work(ctx context.Context, job *river.Job[ProcessPaymentArgs]) error {
	if w.Gateway == nil {
		// This runner only accepts payments: leave the job, untouched and
		// without using an attempt, to a runner that has a gateway.
		return river.JobSnooze(NoGatewaySnooze)
	}
	id := job.Args.PaymentID
	var p *payment.Payment
	err := runner.WorkTx(ctx, w.txDB(), job, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		p, err = payment.Lock(ctx, tx, id)
		if errors.Is(err, payment.ErrNotFound) {
			return river.JobCancel(fmt.Errorf("payment %d does not exist", id))
		}
		if err != nil {
			return err
		}
		if p.Final() {
			return nil
		}
		if err := payment.MarkProcessing(ctx, tx, id); err != nil {
			return err
		}
		return runner.KeepChanges(errCall)
	})
	if !errors.Is(err, errCall) {
		return err
	}

	charge, callErr := w.Gateway.Charge(ctx, &gateway.ChargeRequest{
		IdempotencyKey: p.GatewayKey, AmountMinor: p.AmountMinor, Currency: p.Currency,
		OrderID: p.OrderID, Description: p.Description,
	})

	// What the gateway answered is a fact now: record it even if the job's
	// context ended during the call.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var (
		declined    *gateway.DeclinedError
		rateLimited *gateway.RateLimitedError
	)
	return runner.WorkTx(rctx, w.txDB(), job, func(ctx context.Context, tx pgx.Tx) error {
		p, err := payment.Lock(ctx, tx, id)
		if err != nil {
			return err
		}
		if p.Final() {
			return nil // another run of this payment finished it
		}
		switch {
		case callErr == nil && charge.Status == gateway.StatusSucceeded:
			return payment.Complete(ctx, tx, id, charge.ID)
		case callErr == nil:
			return payment.Fail(ctx, tx, id, "declined", "the gateway declined the charge "+charge.ID)
		case errors.As(callErr, &declined):
			return payment.Fail(ctx, tx, id, declined.Code, declined.Message)
		case errors.As(callErr, &rateLimited):
			// Not a failure of the charge: no job attempt is used.
			return river.JobSnooze(max(rateLimited.RetryAfter, 100*time.Millisecond))
		case errors.Is(callErr, gateway.ErrKeyReused), errors.Is(callErr, gateway.ErrInvalidRequest):
			// Retrying the same request cannot succeed: stop and leave the
			// payment processing, with the error, for an operator.
			if err := payment.RecordError(ctx, tx, id, callErr.Error()); err != nil {
				return errors.Join(callErr, err)
			}
			return runner.KeepChanges(river.JobCancel(callErr))
		default:
			if err := payment.RecordError(ctx, tx, id, callErr.Error()); err != nil {
				return errors.Join(callErr, err)
			}
			return runner.KeepChanges(callErr)
		}
	})
}
