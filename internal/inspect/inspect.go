// Package inspect answers an operator's questions from the database, on the
// same views a user can query with SQL (ops_*): how the queues stand, and the
// whole story of one job or one idempotency key. `runner inspect` prints it.
package inspect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgonce/pgonce/datasync"
	"github.com/pgonce/pgonce/gateway"
	"github.com/pgonce/pgonce/payment"
)

// ErrNotFound is returned for a job or key with no trace in the database.
var ErrNotFound = errors.New("not found")

// Duration marshals as a number of seconds.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).Seconds()) }

func (d Duration) String() string { return time.Duration(d).Round(time.Millisecond).String() }

// QueueRow is a row of ops_queues.
type QueueRow struct {
	Queue             string    `json:"queue"`
	Available         int64     `json:"available"`
	Running           int64     `json:"running"`
	Waiting           int64     `json:"waiting"`
	OldestAvailable   *Duration `json:"oldest_available_seconds"`
	FailedLastHour    int64     `json:"failed_last_hour"`
	CompletedLastHour int64     `json:"completed_last_hour"`
}

// JobsRow is a row of ops_jobs.
type JobsRow struct {
	Kind      string   `json:"kind"`
	Queue     string   `json:"queue"`
	State     string   `json:"state"`
	Jobs      int64    `json:"jobs"`
	OldestAge Duration `json:"oldest_age_seconds"`
}

// DuplicatesRow is a row of ops_duplicates.
type DuplicatesRow struct {
	Kind       string `json:"kind"`
	Inserted   int64  `json:"inserted"`
	Duplicates int64  `json:"duplicates"`
}

// SyncRow is a row of ops_sync_lag.
type SyncRow struct {
	Source    string    `json:"source"`
	Lag       *Duration `json:"lag_seconds"`
	Running   bool      `json:"running"`
	LastError *string   `json:"last_error"`
}

// Summary is the state of the whole runner.
type Summary struct {
	Queues         []QueueRow      `json:"queues"`
	Jobs           []JobsRow       `json:"jobs"`
	Duplicates     []DuplicatesRow `json:"duplicates"`
	EmailsInDoubt  int64           `json:"emails_in_doubt"`
	PaymentsStuck  int64           `json:"payments_stuck"`
	KeysStored     int64           `json:"idempotency_keys_stored"`
	KeysInFlight   int64           `json:"idempotency_keys_in_flight"`
	Sync           []SyncRow       `json:"sync"`
	FailedLastHour int64           `json:"failed_last_hour"`
}

func optDuration(secs *float64) *Duration {
	if secs == nil {
		return nil
	}
	d := Duration(time.Duration(*secs * float64(time.Second)))
	return &d
}

// LoadSummary reads the summary from the ops views.
func LoadSummary(ctx context.Context, pool *pgxpool.Pool) (*Summary, error) {
	s := &Summary{}
	rows, err := pool.Query(ctx, `
		SELECT queue, available, running, waiting, extract(epoch FROM oldest_available_age)::float8,
		       failed_last_hour, completed_last_hour
		FROM ops_queues ORDER BY queue`)
	if err != nil {
		return nil, fmt.Errorf("reading ops_queues: %w", err)
	}
	s.Queues, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (QueueRow, error) {
		var q QueueRow
		var oldest *float64
		err := r.Scan(&q.Queue, &q.Available, &q.Running, &q.Waiting, &oldest, &q.FailedLastHour, &q.CompletedLastHour)
		q.OldestAvailable = optDuration(oldest)
		return q, err
	})
	if err != nil {
		return nil, err
	}
	for _, q := range s.Queues {
		s.FailedLastHour += q.FailedLastHour
	}
	rows, err = pool.Query(ctx, `SELECT kind, queue, state, jobs, extract(epoch FROM oldest_age)::float8 FROM ops_jobs ORDER BY kind, queue, state`)
	if err != nil {
		return nil, fmt.Errorf("reading ops_jobs: %w", err)
	}
	s.Jobs, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (JobsRow, error) {
		var j JobsRow
		var age float64
		err := r.Scan(&j.Kind, &j.Queue, &j.State, &j.Jobs, &age)
		j.OldestAge = Duration(time.Duration(age * float64(time.Second)))
		return j, err
	})
	if err != nil {
		return nil, err
	}
	rows, err = pool.Query(ctx, `SELECT kind, inserted, duplicates FROM ops_duplicates ORDER BY kind`)
	if err != nil {
		return nil, fmt.Errorf("reading ops_duplicates: %w", err)
	}
	s.Duplicates, err = pgx.CollectRows(rows, pgx.RowToStructByPos[DuplicatesRow])
	if err != nil {
		return nil, err
	}
	err = pool.QueryRow(ctx, `
		SELECT (SELECT count(DISTINCT email_log_id) FROM ops_emails_in_doubt),
		       (SELECT count(*) FROM ops_payments_stuck),
		       (SELECT count(*) FROM ops_idempotency_keys WHERE state = 'stored'),
		       (SELECT count(*) FROM ops_idempotency_keys WHERE state = 'in flight')`).
		Scan(&s.EmailsInDoubt, &s.PaymentsStuck, &s.KeysStored, &s.KeysInFlight)
	if err != nil {
		return nil, fmt.Errorf("reading the ops views: %w", err)
	}
	rows, err = pool.Query(ctx, `SELECT source, extract(epoch FROM lag)::float8, running, last_error FROM ops_sync_lag ORDER BY source`)
	if err != nil {
		return nil, fmt.Errorf("reading ops_sync_lag: %w", err)
	}
	s.Sync, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (SyncRow, error) {
		var row SyncRow
		var lag *float64
		err := r.Scan(&row.Source, &lag, &row.Running, &row.LastError)
		row.Lag = optDuration(lag)
		return row, err
	})
	return s, err
}

// AttemptError is one entry of a job's errors.
type AttemptError struct {
	Attempt int       `json:"attempt"`
	At      time.Time `json:"at"`
	Error   string    `json:"error"`
}

// Job is a river_job row.
type Job struct {
	ID          int64           `json:"id"`
	Kind        string          `json:"kind"`
	Queue       string          `json:"queue"`
	State       string          `json:"state"`
	Attempt     int             `json:"attempt"`
	MaxAttempts int             `json:"max_attempts"`
	Args        json.RawMessage `json:"args"`
	Metadata    json.RawMessage `json:"metadata"`
	CreatedAt   time.Time       `json:"created_at"`
	ScheduledAt time.Time       `json:"scheduled_at"`
	AttemptedAt *time.Time      `json:"attempted_at"`
	AttemptedBy []string        `json:"attempted_by"`
	FinalizedAt *time.Time      `json:"finalized_at"`
	Errors      []AttemptError  `json:"errors"`
}

const jobColumns = `id, kind, queue, state::text, attempt, max_attempts, args, metadata, created_at, scheduled_at,
	attempted_at, coalesce(attempted_by, '{}'), finalized_at, coalesce(to_jsonb(errors), '[]'::jsonb)`

func scanJob(row pgx.Row) (*Job, error) {
	var j Job
	var errs []byte
	err := row.Scan(&j.ID, &j.Kind, &j.Queue, &j.State, &j.Attempt, &j.MaxAttempts, &j.Args, &j.Metadata, &j.CreatedAt,
		&j.ScheduledAt, &j.AttemptedAt, &j.AttemptedBy, &j.FinalizedAt, &errs)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	_ = json.Unmarshal(errs, &j.Errors)
	return &j, nil
}

// Email is an email_log row with its attempts.
type Email struct {
	ID        int64          `json:"id"`
	Recipient string         `json:"recipient"`
	EmailType string         `json:"email_type"`
	Status    string         `json:"status"`
	MessageID string         `json:"message_id"`
	JobID     *int64         `json:"job_id"`
	InDoubt   bool           `json:"in_doubt"`
	LastError *string        `json:"last_error"`
	SentAt    *time.Time     `json:"sent_at"`
	Attempts  []EmailAttempt `json:"attempts"`
}

// EmailAttempt is an email_attempts row.
type EmailAttempt struct {
	ID         int64      `json:"id"`
	JobID      int64      `json:"job_id"`
	JobAttempt int        `json:"job_attempt"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
	Outcome    *string    `json:"outcome"`
	Error      *string    `json:"error"`
}

// StoredKey is an idempotency_keys row.
type StoredKey struct {
	Principal      string            `json:"principal"`
	Key            string            `json:"key"`
	Method         string            `json:"method"`
	Path           string            `json:"path"`
	ResponseStatus int               `json:"response_status"`
	Headers        map[string]string `json:"response_headers"`
	Body           json.RawMessage   `json:"response_body"`
	RequestID      *string           `json:"request_id"`
	CreatedAt      time.Time         `json:"created_at"`
	ExpiresAt      time.Time         `json:"expires_at"`
}

// Story is everything the database (and the gateway, when reachable) knows
// about a job or a key.
type Story struct {
	Keys     []StoredKey       `json:"idempotency_keys,omitempty"`
	Payments []payment.Payment `json:"payments,omitempty"`
	Jobs     []Job             `json:"jobs,omitempty"`
	Emails   []Email           `json:"emails,omitempty"`
	Charges  []gateway.Charge  `json:"gateway_charges,omitempty"`
	Sync     *datasync.Cursor  `json:"sync,omitempty"`
	Notes    []string          `json:"notes,omitempty"`
}

// Options tune the story.
type Options struct {
	// GatewayURL, when set, is asked for the charges of payments' keys.
	GatewayURL string
	// GatewayToken is the gateway's bearer token, if it needs one.
	GatewayToken string
	// Principal restricts a key's story to one client.
	Principal string
}

// LoadJob tells the story of job id: the job, and what it produced.
func LoadJob(ctx context.Context, pool *pgxpool.Pool, id int64, opts *Options) (*Story, error) {
	if opts == nil {
		opts = &Options{}
	}
	st := &Story{}
	j, err := scanJob(pool.QueryRow(ctx, `SELECT `+jobColumns+` FROM river_job WHERE id = $1`, id))
	switch {
	case errors.Is(err, ErrNotFound):
		st.Notes = append(st.Notes, fmt.Sprintf("job %d is not in river_job (never existed, or deleted after River's retention period)", id))
	case err != nil:
		return nil, err
	default:
		st.Jobs = append(st.Jobs, *j)
	}
	// What the job produced, found through its args or through the rows
	// that record the job's id.
	var userID *int64
	var emailType *string
	if j != nil && j.Kind == "welcome_email" {
		var args struct {
			UserID    int64  `json:"user_id"`
			EmailType string `json:"email_type"`
		}
		if json.Unmarshal(j.Args, &args) == nil {
			userID, emailType = &args.UserID, &args.EmailType
		}
	}
	if err := st.loadEmails(ctx, pool, `(l.job_id = $1 OR (l.user_id = $2 AND l.email_type = $3)
		OR l.id IN (SELECT email_log_id FROM email_attempts WHERE job_id = $1))`, id, userID, emailType); err != nil {
		return nil, err
	}
	var paymentID *int64
	if j != nil && j.Kind == "process_payment" {
		var args struct {
			PaymentID int64 `json:"payment_id"`
		}
		if json.Unmarshal(j.Args, &args) == nil {
			paymentID = &args.PaymentID
		}
	}
	if err := st.loadPayments(ctx, pool, `(job_id = $1 OR id = $2)`, id, paymentID); err != nil {
		return nil, err
	}
	if j != nil && j.Kind == "sync_data" {
		var args struct {
			Source string `json:"source"`
		}
		if json.Unmarshal(j.Args, &args) == nil {
			if c, err := datasync.Status(ctx, pool, args.Source); err == nil {
				st.Sync = c
			}
		}
	}
	st.loadCharges(ctx, opts.GatewayURL, opts.GatewayToken)
	if len(st.Jobs) == 0 && len(st.Emails) == 0 && len(st.Payments) == 0 {
		return nil, fmt.Errorf("%w: job %d", ErrNotFound, id)
	}
	return st, nil
}

// LoadKey tells the story of an idempotency key: its stored answers (one per
// client that used it), the payments it names, their jobs and charges.
func LoadKey(ctx context.Context, pool *pgxpool.Pool, key string, opts *Options) (*Story, error) {
	if opts == nil {
		opts = &Options{}
	}
	st := &Story{}
	var principal *string
	if opts.Principal != "" {
		principal = &opts.Principal
	}
	rows, err := pool.Query(ctx, `
		SELECT principal, key, method, path, response_status, response_headers, response_body, request_id, created_at, expires_at
		FROM idempotency_keys WHERE key = $1 AND ($2::text IS NULL OR principal = $2) ORDER BY principal`, key, principal)
	if err != nil {
		return nil, err
	}
	st.Keys, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (StoredKey, error) {
		var k StoredKey
		var body []byte
		err := r.Scan(&k.Principal, &k.Key, &k.Method, &k.Path, &k.ResponseStatus, &k.Headers, &body, &k.RequestID, &k.CreatedAt, &k.ExpiresAt)
		if json.Valid(body) {
			k.Body = body
		} else {
			k.Body, _ = json.Marshal(string(body))
		}
		return k, err
	})
	if err != nil {
		return nil, err
	}
	if err := st.loadPayments(ctx, pool, `idempotency_key = $1 AND ($2::text IS NULL OR client_id = $2)`, key, principal); err != nil {
		return nil, err
	}
	for _, p := range st.Payments {
		rows, err := pool.Query(ctx, `SELECT `+jobColumns+` FROM river_job
			WHERE kind = 'process_payment' AND (args->>'payment_id')::bigint = $1 ORDER BY id`, p.ID)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			j, err := scanJob(rows)
			if err != nil {
				rows.Close()
				return nil, err
			}
			st.Jobs = append(st.Jobs, *j)
		}
		rows.Close()
	}
	st.loadCharges(ctx, opts.GatewayURL, opts.GatewayToken)
	if len(st.Keys) == 0 && len(st.Payments) == 0 {
		return nil, fmt.Errorf("%w: key %q", ErrNotFound, key)
	}
	if len(st.Keys) == 0 {
		st.Notes = append(st.Notes, "no stored answer: the key expired (the payment it created stays)")
	}
	return st, nil
}

func (st *Story) loadEmails(ctx context.Context, pool *pgxpool.Pool, where string, args ...any) error {
	rows, err := pool.Query(ctx, `
		SELECT l.id, u.email, l.email_type, l.status, l.message_id, l.job_id, l.in_doubt, l.last_error, l.sent_at
		FROM email_log l JOIN users u ON u.id = l.user_id WHERE `+where+` ORDER BY l.id`, args...)
	if err != nil {
		return err
	}
	st.Emails, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Email, error) {
		var e Email
		err := r.Scan(&e.ID, &e.Recipient, &e.EmailType, &e.Status, &e.MessageID, &e.JobID, &e.InDoubt, &e.LastError, &e.SentAt)
		return e, err
	})
	if err != nil {
		return err
	}
	for i := range st.Emails {
		rows, err := pool.Query(ctx, `SELECT id, job_id, job_attempt, started_at, finished_at, outcome, error
			FROM email_attempts WHERE email_log_id = $1 ORDER BY id`, st.Emails[i].ID)
		if err != nil {
			return err
		}
		st.Emails[i].Attempts, err = pgx.CollectRows(rows, pgx.RowToStructByPos[EmailAttempt])
		if err != nil {
			return err
		}
	}
	return nil
}

func (st *Story) loadPayments(ctx context.Context, pool *pgxpool.Pool, where string, args ...any) error {
	rows, err := pool.Query(ctx, `SELECT id, client_id FROM payments WHERE `+where+` ORDER BY id`, args...)
	if err != nil {
		return err
	}
	type ref struct {
		ID     int64
		Client string
	}
	refs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[ref])
	if err != nil {
		return err
	}
	for _, r := range refs {
		p, err := payment.Get(ctx, pool, r.Client, r.ID)
		if err != nil {
			return err
		}
		st.Payments = append(st.Payments, *p)
	}
	return nil
}

// loadCharges asks the gateway for the charges of the story's payments.
func (st *Story) loadCharges(ctx context.Context, gatewayURL, token string) {
	if gatewayURL == "" || len(st.Payments) == 0 {
		return
	}
	client := &http.Client{Timeout: 5 * time.Second}
	for _, p := range st.Payments {
		u := gatewayURL + "/v1/charges?idempotency_key=" + url.QueryEscape(p.GatewayKey)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			st.Notes = append(st.Notes, "gateway URL unusable: "+err.Error())
			return
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			st.Notes = append(st.Notes, "gateway unreachable: "+err.Error())
			return
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			st.Notes = append(st.Notes, fmt.Sprintf("gateway ledger refused: GET /v1/charges answered %s", resp.Status))
			return
		}
		var charges []gateway.Charge
		err = json.NewDecoder(resp.Body).Decode(&charges)
		resp.Body.Close()
		if err != nil {
			st.Notes = append(st.Notes, "gateway ledger unreadable: "+err.Error())
			return
		}
		st.Charges = append(st.Charges, charges...)
	}
}
