package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/riverqueue/river/rivertype"

	"github.com/pgonce/pgonce/internal/problem"
	"github.com/pgonce/pgonce/runner"
)

// JobView is a job in API responses.
type JobView struct {
	ID          int64           `json:"id"`
	Kind        string          `json:"kind"`
	Queue       string          `json:"queue"`
	State       string          `json:"state"`
	Attempt     int             `json:"attempt"`
	MaxAttempts int             `json:"max_attempts"`
	Args        json.RawMessage `json:"args"`
	CreatedAt   time.Time       `json:"created_at"`
	ScheduledAt time.Time       `json:"scheduled_at"`
	FinalizedAt *time.Time      `json:"finalized_at,omitempty"`
	Errors      []string        `json:"errors,omitempty"`
}

func jobView(j *rivertype.JobRow) JobView {
	v := JobView{
		ID: j.ID, Kind: j.Kind, Queue: j.Queue, State: string(j.State), Attempt: j.Attempt, MaxAttempts: j.MaxAttempts,
		Args: json.RawMessage(j.EncodedArgs), CreatedAt: j.CreatedAt, ScheduledAt: j.ScheduledAt, FinalizedAt: j.FinalizedAt,
	}
	for _, e := range j.Errors {
		v.Errors = append(v.Errors, e.Error)
	}
	return v
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
	defer cancel()
	job, err := s.cfg.Runner.Client().JobGet(ctx, id)
	if errors.Is(err, rivertype.ErrNotFound) {
		problem.Write(w, r, problem.New(http.StatusNotFound, "job-not-found", "Job not found",
			"No such job; finished jobs are deleted after the retention period."))
		return
	}
	if err != nil {
		problem.DatabaseError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, jobView(job))
}

// retryJob is the operator's retry. Retrying a unique job whose key a live
// duplicate holds is a 409 naming that job, and changes nothing.
func (s *Server) retryJob(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
	defer cancel()
	job, err := s.cfg.Runner.RetryJob(ctx, id)
	var dup *runner.DuplicateJobError
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, jobView(job))
	case errors.As(err, &dup):
		problem.Write(w, r, problem.New(http.StatusConflict, "duplicate-live-job", "A live duplicate holds this job's unique key",
			"Retrying would run a second copy of a unique job. The live job is left as it is.").
			With("live_job_id", dup.LiveJobID).With("live_job_state", dup.LiveState))
	case errors.Is(err, runner.ErrJobNotFound):
		problem.Write(w, r, problem.New(http.StatusNotFound, "job-not-found", "Job not found", ""))
	default:
		problem.DatabaseError(w, r, err)
	}
}
