package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/pgonce/pgonce/emaillog"
	"github.com/pgonce/pgonce/mailer"
	"github.com/pgonce/pgonce/runner"
)

// KindWelcomeEmail is the job kind of WelcomeEmailArgs.
const KindWelcomeEmail = "welcome_email"

// QueueEmail is the queue email jobs run in.
const QueueEmail = "email"

// WelcomeEmailMaxAttempts is how often a welcome email is tried before its job
// is discarded (its email_log row then stays "sending" with the last error).
const WelcomeEmailMaxAttempts = 10

// WelcomeEmailArgs sends the welcome email of a type to a user.
//
// Dedupe policy: a welcome email of a type goes to a user at most once, ever.
// The job is unique by (user_id, email_type) across all queues while a job for
// it is queued, running, retrying or completed (River's unique index); beyond
// River's retention, the email_log row's UNIQUE(user_id, email_type) keeps the
// guarantee and EnqueueWelcomeEmail reports the duplicate with the job id
// recorded there. The only enqueue that is not a duplicate after the first is
// one that revives an email whose job was discarded or cancelled before the
// email was sent.
type WelcomeEmailArgs struct {
	UserID    int64  `json:"user_id" river:"unique"`
	EmailType string `json:"email_type" river:"unique"`
}

// Kind implements river.JobArgs.
func (WelcomeEmailArgs) Kind() string { return KindWelcomeEmail }

// InsertOpts implements river.JobArgsWithInsertOpts.
func (WelcomeEmailArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{
		Queue:       QueueEmail,
		MaxAttempts: WelcomeEmailMaxAttempts,
		UniqueOpts:  river.UniqueOpts{ByArgs: true},
	}
}

// EnqueueWelcomeEmail enqueues the welcome email of emailType to userID in
// the caller's transaction, with its email_log row, and reports a duplicate
// with the existing job's id, whether River still holds that job or not.
func EnqueueWelcomeEmail(ctx context.Context, r *runner.Runner, tx pgx.Tx, userID int64, emailType, messageDomain string) (*runner.EnqueueResult, error) {
	res, err := r.Enqueue(ctx, tx, WelcomeEmailArgs{UserID: userID, EmailType: emailType}, nil)
	if err != nil {
		return nil, err
	}
	if res.Duplicate {
		return res, nil
	}
	entry, created, err := emaillog.Create(ctx, tx, userID, emailType, emaillog.MessageID(userID, emailType, messageDomain), res.JobID)
	if err != nil {
		return nil, err
	}
	if created {
		return res, nil
	}
	// River no longer holds a live job for this email, but the email has a
	// row: its job finished and was cleaned up, or was discarded/cancelled.
	switch entry.Status {
	case emaillog.StatusSent, emaillog.StatusFailed:
		// Done for good: drop the job inserted above (this transaction's own)
		// and report the duplicate.
		if _, err := r.Client().JobDeleteTx(ctx, tx, res.JobID); err != nil {
			return nil, fmt.Errorf("dropping redundant welcome email job: %w", err)
		}
		existing := &runner.EnqueueResult{Duplicate: true}
		if entry.JobID != nil {
			existing.JobID = *entry.JobID
		}
		return existing, nil
	default:
		// Never sent and its job is gone: the new job takes over.
		if _, err := tx.Exec(ctx, `UPDATE email_log SET job_id = $2, updated_at = now() WHERE id = $1`, entry.ID, res.JobID); err != nil {
			return nil, fmt.Errorf("handing email log to the new job: %w", err)
		}
		return res, nil
	}
}

// WelcomeEmailWorker sends welcome emails over SMTP.
//
// No transaction stays open across the SMTP conversation (a slow mail server
// must not hold database connections). One transaction claims the email: it
// locks the email_log row, completes the job at once if the email is already
// sent, else records a send attempt and takes a lease on the email (another
// run of it waits for the lease to end). Then the worker sends with the
// email's deterministic Message-ID. A second transaction locks the row again,
// records the outcome, releases the lease, marks the email sent and completes
// the job. A process that dies between the send and that commit leaves the
// attempt without an outcome: the retry, once the lease has expired, sends
// again with the same Message-ID and marks the email in doubt.
type WelcomeEmailWorker struct {
	river.WorkerDefaults[WelcomeEmailArgs]

	Pool *pgxpool.Pool
	// TxDB begins the claim and record transactions: a *runner.Group to
	// commit many jobs' transactions together. Defaults to Pool.
	TxDB   runner.Beginner
	Mailer mailer.Sender
	// From is the sender address. Defaults to "welcome@" + Domain.
	From string
	// Domain is the right-hand side of Message-IDs. Defaults to DomainDefault.
	Domain string
	// LeaseFor is how long a send attempt holds the email; it must exceed
	// the longest SMTP conversation. Defaults to EmailLeaseDefault.
	LeaseFor time.Duration
}

// DomainDefault is the Message-ID domain when none is configured.
const DomainDefault = "pgonce.localhost"

// EmailLeaseDefault bounds a send attempt's hold on an email: four times
// the mailer's per-operation SMTP timeout.
const EmailLeaseDefault = 4 * mailer.SMTPTimeoutDefault

func (w *WelcomeEmailWorker) domain() string {
	if w.Domain != "" {
		return w.Domain
	}
	return DomainDefault
}

// errSend ends the claim transaction: commit the claim, then send.
var errSend = errors.New("claimed; send")

// Work implements river.Worker.
func (w *WelcomeEmailWorker) Work(ctx context.Context, job *river.Job[WelcomeEmailArgs]) error {
	args := job.Args
	leaseFor := w.LeaseFor
	if leaseFor <= 0 {
		leaseFor = EmailLeaseDefault
	}
	var claim *emaillog.Claim
	err := runner.WorkTx(ctx, w.txDB(), job, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		claim, err = emaillog.ClaimSend(ctx, tx, args.UserID, args.EmailType,
			emaillog.MessageID(args.UserID, args.EmailType, w.domain()), job.ID, job.Attempt, leaseFor)
		switch {
		case err != nil:
			return err
		case claim.Status == emaillog.StatusSent:
			return nil // sent already: complete the job, send nothing
		case claim.Status == emaillog.StatusFailed:
			return river.JobCancel(fmt.Errorf("email %d was rejected permanently: %s", claim.ID, deref(claim.LastError)))
		case claim.AttemptID == 0:
			// Another attempt is sending it right now; come back when its
			// lease ends (a snooze uses no attempt).
			return river.JobSnooze(max(time.Until(*claim.LeaseUntil), time.Second))
		}
		return runner.KeepChanges(errSend)
	})
	if !errors.Is(err, errSend) {
		return err
	}

	finished := false
	defer func() {
		// A panic between the claim and the record (in the mailer, say):
		// the send's fate is unknown. Record that and release the lease, so
		// that the retry need not wait for it, then let River see the panic.
		if v := recover(); v != nil {
			if !finished {
				w.abandon(context.WithoutCancel(ctx), claim, fmt.Sprint("panic: ", v))
			}
			panic(v)
		}
	}()
	sendErr := w.Mailer.Send(ctx, &mailer.Message{
		MessageID: claim.MessageID,
		From:      w.from(),
		To:        claim.Recipient,
		Subject:   "Welcome!",
		Text:      "Welcome aboard. This message was sent once, by job " + fmt.Sprint(job.ID) + ".\n",
		Headers:   map[string]string{"X-Email-Type": claim.EmailType},
	})
	result := sendResult(sendErr, claim.EarlierUnresolved > 0)

	// What happened at the SMTP server is a fact now: record it even if
	// the job's context ended during the send (a shutdown, a timeout).
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	finished = true
	return runner.WorkTx(rctx, w.txDB(), job, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := emaillog.Lock(ctx, tx, args.UserID, args.EmailType); err != nil {
			return err
		}
		if err := emaillog.Finish(ctx, tx, claim.ID, claim.AttemptID, result); err != nil {
			return errors.Join(sendErr, err)
		}
		switch {
		case sendErr == nil:
			return nil // sent and recorded: complete the job
		case errors.Is(sendErr, mailer.ErrPermanent):
			return runner.KeepChanges(river.JobCancel(sendErr))
		default:
			return runner.KeepChanges(sendErr)
		}
	})
}

// abandon records that a claimed send ended without a known outcome and
// releases its lease (best effort: if it fails, the lease expires).
func (w *WelcomeEmailWorker) abandon(ctx context.Context, claim *emaillog.Claim, why string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_ = pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		if _, err := emaillog.Lock(ctx, tx, claim.UserID, claim.EmailType); err != nil {
			return err
		}
		return emaillog.Finish(ctx, tx, claim.ID, claim.AttemptID, emaillog.Result{
			Outcome: emaillog.OutcomeUnknown, Status: emaillog.StatusSending, Error: why, InDoubt: true,
		})
	})
}

// sendResult is what a send's error means for the email.
func sendResult(sendErr error, earlierInDoubt bool) emaillog.Result {
	switch {
	case sendErr == nil:
		return emaillog.Result{Outcome: emaillog.OutcomeDelivered, Status: emaillog.StatusSent, InDoubt: earlierInDoubt}
	case errors.Is(sendErr, mailer.ErrPermanent):
		return emaillog.Result{Outcome: emaillog.OutcomeNotSent, Status: emaillog.StatusFailed, Error: sendErr.Error(), InDoubt: earlierInDoubt}
	case errors.Is(sendErr, mailer.ErrInDoubt):
		return emaillog.Result{Outcome: emaillog.OutcomeUnknown, Status: emaillog.StatusSending, Error: sendErr.Error(), InDoubt: true}
	default:
		return emaillog.Result{Outcome: emaillog.OutcomeNotSent, Status: emaillog.StatusSending, Error: sendErr.Error(), InDoubt: earlierInDoubt}
	}
}

func (w *WelcomeEmailWorker) txDB() runner.Beginner {
	if w.TxDB != nil {
		return w.TxDB
	}
	return w.Pool
}

func (w *WelcomeEmailWorker) from() string {
	if w.From != "" {
		return w.From
	}
	return "welcome@" + w.domain()
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
