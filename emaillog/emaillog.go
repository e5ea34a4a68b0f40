package emaillog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Status values of email_log.status.
const (
	StatusQueued  = "queued"  // no send attempted yet
	StatusSending = "sending" // attempted, not delivered yet
	StatusSent    = "sent"    // accepted by the SMTP server
	StatusFailed  = "failed"  // rejected permanently
)

// Outcome values of email_attempts.outcome.
const (
	OutcomeDelivered = "delivered"
	OutcomeNotSent   = "not_sent"
	OutcomeUnknown   = "unknown"
	OutcomeSkipped   = "skipped"
)

// ErrNotFound is returned when no email_log row matches.
var ErrNotFound = errors.New("emaillog: not found")

// Querier is what the functions here need: a pgx.Tx, *pgxpool.Pool,
// *pgxpool.Conn and *pgx.Conn all are.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// Entry is an email_log row.
type Entry struct {
	ID        int64
	UserID    int64
	EmailType string
	Status    string
	MessageID string
	JobID     *int64
	Attempts  int
	InDoubt   bool
	LastError *string
	CreatedAt time.Time
	UpdatedAt time.Time
	SentAt    *time.Time
}

const entryColumns = `id, user_id, email_type, status, message_id, job_id, attempts, in_doubt, last_error, created_at, updated_at, sent_at`

func scanEntry(row pgx.Row) (*Entry, error) {
	var e Entry
	err := row.Scan(&e.ID, &e.UserID, &e.EmailType, &e.Status, &e.MessageID, &e.JobID, &e.Attempts,
		&e.InDoubt, &e.LastError, &e.CreatedAt, &e.UpdatedAt, &e.SentAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return &e, nil
}

// MessageID derives the Message-ID of the email of emailType to userID from
// what identifies it, so every attempt, by any job, carries the same one.
func MessageID(userID int64, emailType, domain string) string {
	sum := sha256.Sum256([]byte("email_log:" + strconv.FormatInt(userID, 10) + ":" + emailType))
	return emailType + "." + hex.EncodeToString(sum[:12]) + "@" + domain
}

// Create inserts the row for (userID, emailType) in the caller's transaction
// unless one exists. It returns the row and whether this call created it; the
// unique constraint decides, so two concurrent calls cannot both create it.
func Create(ctx context.Context, q Querier, userID int64, emailType, messageID string, jobID int64) (*Entry, bool, error) {
	e, err := scanEntry(q.QueryRow(ctx, `
		INSERT INTO email_log (user_id, email_type, message_id, job_id)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, email_type) DO NOTHING
		RETURNING `+entryColumns, userID, emailType, messageID, jobID))
	if err == nil {
		return e, true, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, false, fmt.Errorf("inserting email log: %w", err)
	}
	e, err = Get(ctx, q, userID, emailType)
	if err != nil {
		return nil, false, fmt.Errorf("reading existing email log: %w", err)
	}
	return e, false, nil
}

// Get returns the row for (userID, emailType).
func Get(ctx context.Context, q Querier, userID int64, emailType string) (*Entry, error) {
	return scanEntry(q.QueryRow(ctx, `SELECT `+entryColumns+` FROM email_log WHERE user_id = $1 AND email_type = $2`, userID, emailType))
}

// BeginAttempt records, in its own transaction, that a send of (userID,
// emailType) is about to start, creating the email_log row if the job was
// enqueued without one. It returns the attempt's id, or 0 when the email is
// already sent or failed and no send will be made.
//
// The record is committed before the SMTP conversation so that a process that
// dies between send and commit leaves a trace: an attempt without an outcome,
// which is what makes the send visible as in doubt.
func BeginAttempt(ctx context.Context, q Querier, userID int64, emailType, messageID string, jobID int64, jobAttempt int) (int64, error) {
	b := &pgx.Batch{}
	b.Queue(`
		INSERT INTO email_log (user_id, email_type, message_id, job_id)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, email_type) DO NOTHING`, userID, emailType, messageID, jobID)
	b.Queue(`
		INSERT INTO email_attempts (email_log_id, job_id, job_attempt)
		SELECT id, $3, $4 FROM email_log
		WHERE user_id = $1 AND email_type = $2 AND status IN ('queued', 'sending')
		RETURNING id`, userID, emailType, jobID, jobAttempt)
	// A batch runs as one implicit transaction and one round trip.
	res := q.SendBatch(ctx, b)
	defer res.Close()
	if _, err := res.Exec(); err != nil {
		return 0, fmt.Errorf("ensuring email log: %w", err)
	}
	var id int64
	if err := res.QueryRow().Scan(&id); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, nil
		}
		return 0, fmt.Errorf("recording send attempt: %w", err)
	}
	if err := res.Close(); err != nil {
		return 0, fmt.Errorf("recording send attempt: %w", err)
	}
	return id, nil
}

// Claim is a locked email_log row and what a sender needs from it.
type Claim struct {
	Entry
	Recipient string // the user's address
	// EarlierUnresolved counts earlier attempts that never recorded an
	// outcome: each may have delivered the email.
	EarlierUnresolved int
}

// Lock locks the row of (userID, emailType) with SELECT ... FOR UPDATE in tx,
// so that concurrent runs of the same email take turns, and returns it with
// the count of earlier attempts (before attemptID) left without an outcome.
func Lock(ctx context.Context, tx pgx.Tx, userID int64, emailType string, attemptID int64) (*Claim, error) {
	var c Claim
	err := tx.QueryRow(ctx, `
		SELECT l.id, l.user_id, l.email_type, l.status, l.message_id, l.job_id, l.attempts, l.in_doubt,
		       l.last_error, l.created_at, l.updated_at, l.sent_at, u.email,
		       (SELECT count(*) FROM email_attempts a
		        WHERE a.email_log_id = l.id AND a.outcome IS NULL AND a.id < $3)
		FROM email_log l
		JOIN users u ON u.id = l.user_id
		WHERE l.user_id = $1 AND l.email_type = $2
		FOR UPDATE OF l`, userID, emailType, attemptID).Scan(
		&c.ID, &c.UserID, &c.EmailType, &c.Status, &c.MessageID, &c.JobID, &c.Attempts, &c.InDoubt,
		&c.LastError, &c.CreatedAt, &c.UpdatedAt, &c.SentAt, &c.Recipient, &c.EarlierUnresolved)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("locking email log: %w", err)
	}
	return &c, nil
}

// Result is what an attempt ended with.
type Result struct {
	Outcome string // OutcomeDelivered, OutcomeNotSent, OutcomeUnknown or OutcomeSkipped
	Status  string // the email's status afterwards
	Error   string // empty on success
	InDoubt bool   // the email may now have been delivered more than once
}

// Finish records attempt attemptID's result on entry entryID in tx. Earlier
// attempts still without an outcome are closed as unknown: their delivery can
// no longer be learnt.
func Finish(ctx context.Context, tx pgx.Tx, entryID, attemptID int64, r Result) error {
	var errText *string
	if r.Error != "" {
		errText = &r.Error
	}
	counted := r.Outcome != OutcomeSkipped
	tag, err := tx.Exec(ctx, `
		WITH earlier AS (
			UPDATE email_attempts
			SET outcome = 'unknown', finished_at = now(),
			    error = 'no outcome recorded: the attempt ended between send and commit'
			WHERE email_log_id = $1 AND outcome IS NULL AND id < $2 AND $6
		), this AS (
			UPDATE email_attempts SET outcome = $3, finished_at = now(), error = $5
			WHERE id = $2
		)
		UPDATE email_log
		SET status = $4,
		    attempts = attempts + CASE WHEN $6 THEN 1 ELSE 0 END,
		    in_doubt = in_doubt OR $7,
		    last_error = CASE WHEN $6 THEN $5 ELSE last_error END,
		    sent_at = CASE WHEN $4 = 'sent' THEN coalesce(sent_at, now()) END,
		    updated_at = now()
		WHERE id = $1`,
		entryID, attemptID, r.Outcome, r.Status, errText, counted, r.InDoubt)
	if err != nil {
		return fmt.Errorf("recording email outcome: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("recording email outcome: email log %d: %w", entryID, ErrNotFound)
	}
	return nil
}
