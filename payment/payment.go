// Package payment stores payments: one row per (client, Idempotency-Key),
// with a status machine the database enforces (pending -> processing ->
// completed | failed) and at most one payment per order that is not failed.
//
// Create finds or inserts a payment in the caller's transaction; the
// process_payment job (package jobs) charges it through a gateway.Gateway
// with GatewayKey, so a retried charge is never made twice.
package payment

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Status values of payments.status.
const (
	StatusPending    = "pending"
	StatusProcessing = "processing"
	StatusCompleted  = "completed"
	StatusFailed     = "failed"
)

// Limits of a payment request.
const (
	MaxAmountMinor       = 1_000_000_000_00 // 1 billion in major units
	MaxDescriptionLength = 500
)

var (
	// ErrInvalid wraps every validation failure of Request.Validate.
	ErrInvalid = errors.New("payment: invalid request")

	// ErrKeyReused is returned by Create when the client's key already names
	// a payment with other parameters (order, amount, currency, description).
	ErrKeyReused = errors.New("payment: idempotency key already used for a different payment")

	// ErrNotFound is returned for a payment that does not exist (or belongs
	// to another client).
	ErrNotFound = errors.New("payment: not found")

	// ErrFinal is returned when recording an outcome on a payment whose
	// status is already final.
	ErrFinal = errors.New("payment: status is final")
)

// OrderConflictError is returned by Create when the order already has a
// payment that is not failed, under another key: charging it again would be
// a second charge for the order.
type OrderConflictError struct {
	OrderID   string
	PaymentID int64
	Status    string
}

func (e *OrderConflictError) Error() string {
	return fmt.Sprintf("payment: order %q already has payment %d (%s)", e.OrderID, e.PaymentID, e.Status)
}

// Querier is what reading needs: a pgx.Tx, *pgxpool.Pool or *pgxpool.Conn.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Payment is a payments row.
type Payment struct {
	ID             int64      `json:"id"`
	ClientID       string     `json:"-"`
	IdempotencyKey string     `json:"-"`
	GatewayKey     string     `json:"-"`
	OrderID        string     `json:"order_id"`
	AmountMinor    int64      `json:"amount"`
	Currency       string     `json:"currency"`
	Description    string     `json:"description,omitempty"`
	Status         string     `json:"status"`
	ChargeID       *string    `json:"charge_id,omitempty"`
	FailureCode    *string    `json:"failure_code,omitempty"`
	FailureMessage *string    `json:"failure_message,omitempty"`
	Attempts       int        `json:"attempts"`
	LastError      *string    `json:"last_error,omitempty"`
	JobID          *int64     `json:"job_id,omitempty"`
	CreatedAt      time.Time  `json:"created_at"`
	UpdatedAt      time.Time  `json:"updated_at"`
	FinishedAt     *time.Time `json:"finished_at,omitempty"`
}

// Final reports whether the status can no longer change.
func (p *Payment) Final() bool { return p.Status == StatusCompleted || p.Status == StatusFailed }

const columns = `id, client_id, idempotency_key, gateway_key, order_id, amount_minor, currency, description, status,
	charge_id, failure_code, failure_message, attempts, last_error, job_id, created_at, updated_at, finished_at`

func scan(row pgx.Row) (*Payment, error) {
	var p Payment
	err := row.Scan(&p.ID, &p.ClientID, &p.IdempotencyKey, &p.GatewayKey, &p.OrderID, &p.AmountMinor, &p.Currency,
		&p.Description, &p.Status, &p.ChargeID, &p.FailureCode, &p.FailureMessage, &p.Attempts, &p.LastError, &p.JobID,
		&p.CreatedAt, &p.UpdatedAt, &p.FinishedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// Request is what a client asks for.
type Request struct {
	ClientID       string
	IdempotencyKey string
	OrderID        string
	AmountMinor    int64
	Currency       string
	Description    string
}

var orderIDPattern = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)

// Validate checks the request's fields.
func (r *Request) Validate() error {
	switch {
	case r.ClientID == "":
		return fmt.Errorf("%w: no client", ErrInvalid)
	case r.IdempotencyKey == "" || len(r.IdempotencyKey) > 255:
		return fmt.Errorf("%w: the idempotency key must be 1 to 255 characters", ErrInvalid)
	case !orderIDPattern.MatchString(r.OrderID):
		return fmt.Errorf("%w: order_id must be 1 to 64 characters of letters, digits and _.:-", ErrInvalid)
	case r.AmountMinor <= 0 || r.AmountMinor > MaxAmountMinor:
		return fmt.Errorf("%w: amount must be a positive integer of minor units, at most %d", ErrInvalid, int64(MaxAmountMinor))
	case !IsCurrency(r.Currency):
		return fmt.Errorf("%w: currency %q is not an ISO 4217 code", ErrInvalid, r.Currency)
	case !utf8.ValidString(r.Description) || utf8.RuneCountInString(r.Description) > MaxDescriptionLength:
		return fmt.Errorf("%w: description must be valid UTF-8 of at most %d characters", ErrInvalid, MaxDescriptionLength)
	case strings.IndexFunc(r.Description, func(c rune) bool { return unicode.IsControl(c) && c != '\n' && c != '\t' }) >= 0:
		return fmt.Errorf("%w: description must not contain control characters", ErrInvalid)
	}
	return nil
}

// same reports whether p was created by a request asking for what r asks.
func (r *Request) same(p *Payment) bool {
	return p.OrderID == r.OrderID && p.AmountMinor == r.AmountMinor && p.Currency == r.Currency && p.Description == r.Description
}

// GatewayKey derives the Idempotency-Key sent to the gateway from the
// client's key: the same on every attempt, distinct across clients.
func GatewayKey(clientID, idempotencyKey string) string {
	sum := sha256.Sum256([]byte("payment\x00" + clientID + "\x00" + idempotencyKey))
	return "pgonce_" + hex.EncodeToString(sum[:16])
}

// Create inserts the payment r asks for in tx, or returns the payment the
// client's key already names (created false). The database decides between
// concurrent requests: UNIQUE(client_id, idempotency_key), and one payment per
// order that is not failed. It returns ErrKeyReused when the key names a
// payment with other parameters, and an *OrderConflictError when the order
// already has a live payment under another key.
func Create(ctx context.Context, tx pgx.Tx, r *Request) (*Payment, bool, error) {
	if err := r.Validate(); err != nil {
		return nil, false, err
	}
	// The payment an insert conflicted with can change before it is read
	// (the order's payment fails, and the order is free again): try again.
	for range 3 {
		p, created, err := create(ctx, tx, r)
		if !errors.Is(err, errConflictGone) {
			return p, created, err
		}
	}
	return nil, false, fmt.Errorf("creating payment: %w", errConflictGone)
}

// errConflictGone: an insert conflicted, and the row it conflicted with was
// gone by the time it was read.
var errConflictGone = errors.New("payment: the conflicting payment changed meanwhile")

func create(ctx context.Context, tx pgx.Tx, r *Request) (*Payment, bool, error) {
	p, err := scan(tx.QueryRow(ctx, `
		INSERT INTO payments (client_id, idempotency_key, gateway_key, order_id, amount_minor, currency, description)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT DO NOTHING
		RETURNING `+columns,
		r.ClientID, r.IdempotencyKey, GatewayKey(r.ClientID, r.IdempotencyKey), r.OrderID, r.AmountMinor, r.Currency, r.Description))
	if err == nil {
		return p, true, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, false, fmt.Errorf("inserting payment: %w", err)
	}

	// A conflict: on the key, or on the order.
	p, err = scan(tx.QueryRow(ctx, `SELECT `+columns+` FROM payments WHERE client_id = $1 AND idempotency_key = $2`, r.ClientID, r.IdempotencyKey))
	switch {
	case err == nil:
		if !r.same(p) {
			return nil, false, fmt.Errorf("%w: payment %d", ErrKeyReused, p.ID)
		}
		return p, false, nil
	case !errors.Is(err, ErrNotFound):
		return nil, false, fmt.Errorf("reading payment by key: %w", err)
	}
	p, err = scan(tx.QueryRow(ctx, `SELECT `+columns+` FROM payments WHERE client_id = $1 AND order_id = $2 AND status <> 'failed'`, r.ClientID, r.OrderID))
	if errors.Is(err, ErrNotFound) {
		return nil, false, errConflictGone
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading the order's payment: %w", err)
	}
	return nil, false, &OrderConflictError{OrderID: r.OrderID, PaymentID: p.ID, Status: p.Status}
}

// Get returns the client's payment id.
func Get(ctx context.Context, q Querier, clientID string, id int64) (*Payment, error) {
	return scan(q.QueryRow(ctx, `SELECT `+columns+` FROM payments WHERE id = $1 AND client_id = $2`, id, clientID))
}

// Lock returns payment id locked FOR UPDATE in tx: concurrent processing of
// the same payment takes turns.
func Lock(ctx context.Context, tx pgx.Tx, id int64) (*Payment, error) {
	p, err := scan(tx.QueryRow(ctx, `SELECT `+columns+` FROM payments WHERE id = $1 FOR UPDATE`, id))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("locking payment %d: %w", id, err)
	}
	return p, err
}

// SetJob records the job that processes payment id.
func SetJob(ctx context.Context, tx pgx.Tx, id, jobID int64) error {
	_, err := tx.Exec(ctx, `UPDATE payments SET job_id = $2, updated_at = now() WHERE id = $1`, id, jobID)
	if err != nil {
		return fmt.Errorf("recording payment job: %w", err)
	}
	return nil
}

// MarkProcessing records that a gateway call for the payment is about to be
// made: status processing, one more attempt.
func MarkProcessing(ctx context.Context, tx pgx.Tx, id int64) error {
	return update(ctx, tx, id, `status = 'processing', attempts = attempts + 1`)
}

// Complete records a successful charge.
func Complete(ctx context.Context, tx pgx.Tx, id int64, chargeID string) error {
	return update(ctx, tx, id, `status = 'completed', charge_id = $2, finished_at = now(), last_error = NULL`, chargeID)
}

// Fail records a final refusal (a decline).
func Fail(ctx context.Context, tx pgx.Tx, id int64, code, message string) error {
	return update(ctx, tx, id, `status = 'failed', failure_code = $2, failure_message = $3, finished_at = now()`, code, message)
}

// RecordError records the error of a gateway call whose outcome is not
// final: the payment stays processing and will be retried.
func RecordError(ctx context.Context, tx pgx.Tx, id int64, errText string) error {
	return update(ctx, tx, id, `status = 'processing', last_error = $2`, errText)
}

// update applies set to a payment that is not final. The guard in the WHERE
// clause and the payments_status_guard trigger both refuse to change a final
// payment.
func update(ctx context.Context, tx pgx.Tx, id int64, set string, args ...any) error {
	tag, err := tx.Exec(ctx, `
		UPDATE payments SET `+set+`, updated_at = now()
		WHERE id = $1 AND status IN ('pending', 'processing')`, append([]any{id}, args...)...)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23514" {
			return fmt.Errorf("%w: payment %d: %w", ErrFinal, id, err)
		}
		return fmt.Errorf("recording payment %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: payment %d", ErrFinal, id)
	}
	return nil
}
