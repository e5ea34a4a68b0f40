package api

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgonce/pgonce/internal/problem"
	"github.com/pgonce/pgonce/jobs"
	"github.com/pgonce/pgonce/signup"
)

type createUserRequest struct {
	Email string `json:"email"`
	Name  string `json:"name"`
}

// JobRef is how responses name a job that a request enqueued or found.
type JobRef struct {
	JobID     int64 `json:"job_id"`
	Duplicate bool  `json:"duplicate"`
}

// CreateUserResponse is the body of POST /api/users.
type CreateUserResponse struct {
	User         *UserView `json:"user"`
	Created      bool      `json:"created"`
	WelcomeEmail JobRef    `json:"welcome_email"`
}

// UserView is a user in the answer to POST /api/users. For a user that
// existed already, only its id and the address the caller sent: users are
// shared by every API client, and what another client stored (a name, the
// address's spelling, when) is for the operator routes only.
type UserView struct {
	ID        int64      `json:"id"`
	Email     string     `json:"email"`
	Name      string     `json:"name,omitempty"`
	CreatedAt *time.Time `json:"created_at,omitempty"`
}

// createUser finds or creates a user and enqueues the welcome email in the
// same transaction: 201 for a new user, 200 for an existing one (the welcome
// email then reported as a duplicate with its job id).
func (s *Server) createUser(w http.ResponseWriter, r *http.Request) {
	var req createUserRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	email, err := signup.NormalizeEmail(req.Email)
	if err != nil {
		problem.Write(w, r, problem.New(http.StatusUnprocessableEntity, "invalid-email", "Invalid email address", detail(err)))
		return
	}
	if err := signup.ValidateName(req.Name); err != nil {
		problem.Write(w, r, problem.New(http.StatusUnprocessableEntity, "invalid-name", "Invalid name", detail(err)))
		return
	}

	// A signup that started runs to its end even if the client hangs up; its
	// retry then finds the user.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.RequestTimeout)
	defer cancel()
	var res *signup.Result
	err = pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		var err error
		res, err = signup.Signup(ctx, tx, s.cfg.Runner, email, req.Name, s.messageDomain())
		return err
	})
	if err != nil {
		s.cfg.Logger.Warn("signup failed", "error", err, "request_id", RequestID(r.Context()))
		problem.DatabaseError(w, r, err)
		return
	}
	status := http.StatusOK
	if res.Created {
		status = http.StatusCreated
	}
	user := &UserView{ID: res.User.ID, Email: email}
	if res.Created {
		user.Name, user.CreatedAt = res.User.Name, &res.User.CreatedAt
	}
	writeJSON(w, status, CreateUserResponse{
		User:         user,
		Created:      res.Created,
		WelcomeEmail: JobRef{JobID: res.WelcomeEmail.JobID, Duplicate: res.WelcomeEmail.Duplicate},
	})
}

func (s *Server) messageDomain() string {
	if s.cfg.MessageDomain != "" {
		return s.cfg.MessageDomain
	}
	return jobs.DomainDefault
}

// EmailView is an email_log row in API responses.
type EmailView struct {
	EmailType string     `json:"email_type"`
	Status    string     `json:"status"`
	MessageID string     `json:"message_id"`
	JobID     *int64     `json:"job_id"`
	Attempts  int        `json:"attempts"`
	InDoubt   bool       `json:"in_doubt"`
	LastError *string    `json:"last_error,omitempty"`
	SentAt    *time.Time `json:"sent_at,omitempty"`
}

func (s *Server) getUser(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
	defer cancel()
	u, err := signup.Get(ctx, s.cfg.Pool, id)
	if errors.Is(err, signup.ErrUserNotFound) {
		problem.Write(w, r, problem.New(http.StatusNotFound, "user-not-found", "User not found", ""))
		return
	}
	if err != nil {
		problem.DatabaseError(w, r, err)
		return
	}
	rows, err := s.cfg.Pool.Query(ctx, `
		SELECT email_type, status, message_id, job_id, attempts, in_doubt, last_error, sent_at
		FROM email_log WHERE user_id = $1 ORDER BY id`, id)
	if err != nil {
		problem.DatabaseError(w, r, err)
		return
	}
	emails, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (EmailView, error) {
		var e EmailView
		err := row.Scan(&e.EmailType, &e.Status, &e.MessageID, &e.JobID, &e.Attempts, &e.InDoubt, &e.LastError, &e.SentAt)
		return e, err
	})
	if err != nil {
		problem.DatabaseError(w, r, err)
		return
	}
	if emails == nil {
		emails = []EmailView{}
	}
	writeJSON(w, http.StatusOK, struct {
		User   *signup.User `json:"user"`
		Emails []EmailView  `json:"emails"`
	}{u, emails})
}

// detail turns a validation error into a sentence for the client, without
// the Go package prefix.
func detail(err error) string {
	msg := err.Error()
	if _, rest, ok := strings.Cut(msg, ": "); ok {
		msg = rest
	}
	if msg != "" {
		msg = strings.ToUpper(msg[:1]) + msg[1:]
	}
	return msg + "."
}
