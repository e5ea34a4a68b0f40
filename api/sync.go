package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgonce/pgonce/datasync"
	"github.com/pgonce/pgonce/internal/problem"
	"github.com/pgonce/pgonce/jobs"
)

// SyncResponse is the body of POST /api/sync/{source}.
type SyncResponse struct {
	Source string `json:"source"`
	JobRef
}

// SyncStatus is the body of GET /api/sync/{source}.
type SyncStatus struct {
	*datasync.Cursor
	// LagSeconds is now - caught_up_to: how far behind the source the
	// destination may be. Null before the first completed sync.
	LagSeconds *float64 `json:"lag_seconds"`
	Running    bool     `json:"running"`
}

func (s *Server) knownSource(w http.ResponseWriter, r *http.Request) (string, bool) {
	name := r.PathValue("source")
	for _, known := range s.cfg.Sources {
		if name == known {
			return name, true
		}
	}
	problem.Write(w, r, problem.New(http.StatusNotFound, "source-not-found", "Unknown data source",
		"No data source "+strconv.Quote(name)+" is configured."))
	return "", false
}

// requestSync enqueues a sync of the source (?full=true: from the
// beginning), or reports the pending one: 202 either way, with its job id.
func (s *Server) requestSync(w http.ResponseWriter, r *http.Request) {
	name, ok := s.knownSource(w, r)
	if !ok {
		return
	}
	full := false
	if v := r.URL.Query().Get("full"); v != "" {
		var err error
		if full, err = strconv.ParseBool(v); err != nil {
			problem.Write(w, r, problem.New(http.StatusBadRequest, "invalid-parameter", "Invalid parameter", "full must be true or false."))
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.RequestTimeout)
	defer cancel()
	var res SyncResponse
	err := pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		job, err := jobs.EnqueueSync(ctx, s.cfg.Runner, tx, name,
			jobs.SyncTrigger{By: "api:" + Principal(r.Context()), RequestID: RequestID(r.Context())}, &jobs.SyncOpts{Full: full})
		if err != nil {
			return err
		}
		res = SyncResponse{Source: name, JobRef: JobRef{JobID: job.JobID, Duplicate: job.Duplicate}}
		return nil
	})
	if err != nil {
		problem.DatabaseError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, res)
}

func (s *Server) syncStatus(w http.ResponseWriter, r *http.Request) {
	name, ok := s.knownSource(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
	defer cancel()
	c, err := datasync.Status(ctx, s.cfg.Pool, name)
	if errors.Is(err, datasync.ErrUnknownSource) {
		c, err = &datasync.Cursor{Source: name}, nil // configured, never synced
	}
	if err != nil {
		problem.DatabaseError(w, r, err)
		return
	}
	st := SyncStatus{Cursor: c, Running: c.RunStartedAt != nil}
	if c.CaughtUpTo != nil {
		lag := time.Since(*c.CaughtUpTo).Seconds()
		st.LagSeconds = &lag
	}
	writeJSON(w, http.StatusOK, st)
}
