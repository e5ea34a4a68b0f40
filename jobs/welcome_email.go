package jobs

import (
	"context"
	"errors"
	"fmt"

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
// Each attempt is first recorded (committed on its own), then in one
// transaction the worker locks the email_log row, returns early if the email
// is already sent, sends it with its deterministic Message-ID, marks it sent
// and completes the job. A process that dies between the send and the commit
// leaves the attempt without an outcome; the retry sends again with the same
// Message-ID and marks the email in doubt.
type WelcomeEmailWorker struct {
	river.WorkerDefaults[WelcomeEmailArgs]

	Pool   *pgxpool.Pool
	Mailer mailer.Sender
	// From is the sender address. Defaults to "welcome@" + Domain.
	From string
	// Domain is the right-hand side of Message-IDs. Defaults to DomainDefault.
	Domain string
}

// DomainDefault is the Message-ID domain when none is configured.
const DomainDefault = "pgonce.localhost"

func (w *WelcomeEmailWorker) domain() string {
	if w.Domain != "" {
		return w.Domain
	}
	return DomainDefault
}

// Work implements river.Worker.
func (w *WelcomeEmailWorker) Work(ctx context.Context, job *river.Job[WelcomeEmailArgs]) error {
	args := job.Args
	conn, err := w.Pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquiring connection: %w", err)
	}
	defer conn.Release()

	// The attempt record and the transaction share one connection, so a
	// worker never holds one connection while waiting for a second.
	attemptID, err := emaillog.BeginAttempt(ctx, conn, args.UserID, args.EmailType,
		emaillog.MessageID(args.UserID, args.EmailType, w.domain()), job.ID, job.Attempt)
	if err != nil {
		return err
	}

	return runner.WorkTx(ctx, conn, job, func(ctx context.Context, tx pgx.Tx) error {
		claim, err := emaillog.Lock(ctx, tx, args.UserID, args.EmailType, attemptID)
		if err != nil {
			return err
		}
		switch claim.Status {
		case emaillog.StatusSent:
			return finishSkipped(ctx, tx, claim, attemptID, nil)
		case emaillog.StatusFailed:
			return finishSkipped(ctx, tx, claim, attemptID,
				river.JobCancel(fmt.Errorf("email %d was rejected permanently: %s", claim.ID, deref(claim.LastError))))
		}
		if attemptID == 0 {
			// Not sent or failed now, yet it was when the attempt began: the
			// row changed under us. Try again.
			return errors.New("email log changed between attempt record and lock")
		}

		earlierInDoubt := claim.EarlierUnresolved > 0
		sendErr := w.Mailer.Send(ctx, &mailer.Message{
			MessageID: claim.MessageID,
			From:      w.from(),
			To:        claim.Recipient,
			Subject:   "Welcome!",
			Text:      "Welcome aboard. This message was sent once, by job " + fmt.Sprint(job.ID) + ".\n",
			Headers:   map[string]string{"X-Email-Type": claim.EmailType},
		})
		switch {
		case sendErr == nil:
			return emaillog.Finish(ctx, tx, claim.ID, attemptID, emaillog.Result{
				Outcome: emaillog.OutcomeDelivered, Status: emaillog.StatusSent, InDoubt: earlierInDoubt,
			})
		case errors.Is(sendErr, mailer.ErrPermanent):
			err := emaillog.Finish(ctx, tx, claim.ID, attemptID, emaillog.Result{
				Outcome: emaillog.OutcomeNotSent, Status: emaillog.StatusFailed, Error: sendErr.Error(), InDoubt: earlierInDoubt,
			})
			return keepOr(err, river.JobCancel(sendErr))
		case errors.Is(sendErr, mailer.ErrInDoubt):
			err := emaillog.Finish(ctx, tx, claim.ID, attemptID, emaillog.Result{
				Outcome: emaillog.OutcomeUnknown, Status: emaillog.StatusSending, Error: sendErr.Error(), InDoubt: true,
			})
			return keepOr(err, sendErr)
		default:
			err := emaillog.Finish(ctx, tx, claim.ID, attemptID, emaillog.Result{
				Outcome: emaillog.OutcomeNotSent, Status: emaillog.StatusSending, Error: sendErr.Error(), InDoubt: earlierInDoubt,
			})
			return keepOr(err, sendErr)
		}
	})
}

func (w *WelcomeEmailWorker) from() string {
	if w.From != "" {
		return w.From
	}
	return "welcome@" + w.domain()
}

// finishSkipped records that this attempt found nothing to send, then
// returns result (nil completes the job).
func finishSkipped(ctx context.Context, tx pgx.Tx, claim *emaillog.Claim, attemptID int64, result error) error {
	if attemptID != 0 {
		if err := emaillog.Finish(ctx, tx, claim.ID, attemptID, emaillog.Result{
			Outcome: emaillog.OutcomeSkipped, Status: claim.Status,
		}); err != nil {
			return err
		}
	}
	if result != nil {
		return runner.KeepChanges(result)
	}
	return nil
}

// keepOr returns recordErr when recording the attempt failed (roll back,
// retry), else jobErr wrapped so the record is committed.
func keepOr(recordErr, jobErr error) error {
	if recordErr != nil {
		return errors.Join(jobErr, recordErr)
	}
	return runner.KeepChanges(jobErr)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
