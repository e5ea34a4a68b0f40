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

// Claim is an email_log row locked for a send, and what a sender needs.
type Claim struct {
	Entry
	Recipient string // the user's address
	// AttemptID is the send attempt this claim recorded; 0 when there is
	// nothing to send (Status sent or failed) or another attempt holds the
	// lease (LeaseUntil).
	AttemptID int64
	// LeaseUntil, for a claim without an attempt, is when another attempt's
	// lease ends.
	LeaseUntil *time.Time
	// EarlierUnresolved counts earlier attempts that never recorded an
	// outcome: each may have delivered the email.
	EarlierUnresolved int
}

// ClaimSend prepares a send of (userID, emailType) in tx, which the caller
// commits before talking SMTP, so that no transaction stays open across the
// send. It creates the email_log row if the job was enqueued without one,
// locks it (SELECT ... FOR UPDATE), and unless the email is sent, failed, or
// held by another attempt's lease, records a send attempt and takes the lease
// for leaseFor.
//
// The attempt is committed before the SMTP conversation: a process that dies
// between the send and recording its outcome leaves the attempt without one,
// which is what makes the retry's send visible as in doubt.
func ClaimSend(ctx context.Context, tx pgx.Tx, userID int64, emailType, messageID string, jobID int64, jobAttempt int, leaseFor time.Duration) (*Claim, error) {
	if _, err := tx.Exec(ctx, `
		INSERT INTO email_log (user_id, email_type, message_id, job_id)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, email_type) DO NOTHING`, userID, emailType, messageID, jobID); err != nil {
		return nil, fmt.Errorf("ensuring email log: %w", err)
	}
	// Lock first, read second: in READ COMMITTED a statement that waits for
	// a row lock reads its subqueries from a snapshot taken before the wait,
	// and would miss the attempt that the lock's previous holder committed.
	var id int64
	err := tx.QueryRow(ctx, `SELECT id FROM email_log WHERE user_id = $1 AND email_type = $2 FOR UPDATE`,
		userID, emailType).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("locking email log: %w", err)
	}
	var c Claim
	var leaseActive bool
	err = tx.QueryRow(ctx, `
		SELECT l.id, l.user_id, l.email_type, l.status, l.message_id, l.job_id, l.attempts, l.in_doubt,
		       l.last_error, l.created_at, l.updated_at, l.sent_at, u.email, l.lease_until,
		       coalesce(l.lease_until > clock_timestamp(), false),
		       (SELECT count(*) FROM email_attempts a WHERE a.email_log_id = l.id AND a.outcome IS NULL)
		FROM email_log l
		JOIN users u ON u.id = l.user_id
		WHERE l.id = $1`, id).Scan(
		&c.ID, &c.UserID, &c.EmailType, &c.Status, &c.MessageID, &c.JobID, &c.Attempts, &c.InDoubt,
		&c.LastError, &c.CreatedAt, &c.UpdatedAt, &c.SentAt, &c.Recipient, &c.LeaseUntil, &leaseActive, &c.EarlierUnresolved)
	if err != nil {
		return nil, fmt.Errorf("reading email log: %w", err)
	}
	switch {
	case c.Status == StatusSent || c.Status == StatusFailed:
		c.LeaseUntil = nil
		return &c, nil
	case leaseActive:
		return &c, nil
	}
	c.LeaseUntil = nil
	err = tx.QueryRow(ctx, `
		WITH attempt AS (
			INSERT INTO email_attempts (email_log_id, job_id, job_attempt) VALUES ($1, $2, $3) RETURNING id
		)
		UPDATE email_log SET status = 'sending', lease_until = clock_timestamp() + $4::interval,
		       lease_attempt_id = (SELECT id FROM attempt), updated_at = now()
		WHERE id = $1
		RETURNING lease_attempt_id`, c.ID, jobID, jobAttempt, leaseFor.String()).Scan(&c.AttemptID)
	if err != nil {
		return nil, fmt.Errorf("recording send attempt: %w", err)
	}
	c.Status = StatusSending
	return &c, nil
}

// Lock returns the row of (userID, emailType) locked FOR UPDATE in tx.
func Lock(ctx context.Context, tx pgx.Tx, userID int64, emailType string) (*Entry, error) {
	e, err := scanEntry(tx.QueryRow(ctx, `SELECT `+entryColumns+` FROM email_log
		WHERE user_id = $1 AND email_type = $2 FOR UPDATE`, userID, emailType))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("locking email log: %w", err)
	}
	return e, err
}

// Result is what an attempt ended with.
type Result struct {
	Outcome string // OutcomeDelivered, OutcomeNotSent, OutcomeUnknown or OutcomeSkipped
	Status  string // the email's status afterwards
	Error   string // empty on success
	InDoubt bool   // the email may now have been delivered more than once
}

// Finish records attempt attemptID's result on entry entryID in tx and
// releases its lease. Earlier attempts still without an outcome are closed as
// unknown: their delivery can no longer be learnt. An email already sent (by
// another attempt whose lease this one outlived) stays sent.
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
		SET status = CASE WHEN status IN ('sent', 'failed') THEN status ELSE $4 END,
		    attempts = attempts + CASE WHEN $6 THEN 1 ELSE 0 END,
		    in_doubt = in_doubt OR $7,
		    last_error = CASE WHEN $6 THEN $5 ELSE last_error END,
		    sent_at = CASE WHEN status = 'sent' OR $4 = 'sent' THEN coalesce(sent_at, now()) END,
		    lease_until = CASE WHEN lease_attempt_id = $2 THEN NULL ELSE lease_until END,
		    lease_attempt_id = CASE WHEN lease_attempt_id = $2 THEN NULL ELSE lease_attempt_id END,
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
