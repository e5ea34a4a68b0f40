// Package problem writes HTTP errors as RFC 9457 problem details
// (application/problem+json), with a stable type URI per kind of error, and
// tells database outages (503) from other failures (500).
package problem

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// TypeBase prefixes every problem type; the README lists them.
const TypeBase = "https://pgonce.dev/problems/"

// StatusClientClosedRequest is the status recorded for a request whose
// client hung up before the answer (nginx's 499).
const StatusClientClosedRequest = 499

// ContentType is the media type of problem details.
const ContentType = "application/problem+json"

// Problem is an RFC 9457 problem details object.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
	// Extensions are extra members, such as the existing job's id.
	Extensions map[string]any `json:"-"`
	// RetryAfter, when positive, is sent as the Retry-After header.
	RetryAfter time.Duration `json:"-"`
}

// New returns a problem of kind slug (the last part of its type URI).
func New(status int, slug, title, detail string) *Problem {
	return &Problem{Type: TypeBase + slug, Title: title, Status: status, Detail: detail}
}

// With adds an extension member.
func (p *Problem) With(key string, value any) *Problem {
	if p.Extensions == nil {
		p.Extensions = map[string]any{}
	}
	p.Extensions[key] = value
	return p
}

// MarshalJSON flattens the extensions into the object.
func (p *Problem) MarshalJSON() ([]byte, error) {
	m := map[string]any{"type": p.Type, "title": p.Title, "status": p.Status}
	if p.Detail != "" {
		m["detail"] = p.Detail
	}
	if p.Instance != "" {
		m["instance"] = p.Instance
	}
	for k, v := range p.Extensions {
		if _, taken := m[k]; !taken {
			m[k] = v
		}
	}
	return json.Marshal(m)
}

// Write sends p, with r's path as its instance unless set.
func Write(w http.ResponseWriter, r *http.Request, p *Problem) {
	if p.Instance == "" && r != nil {
		p.Instance = r.URL.Path
	}
	body, err := json.Marshal(p)
	if err != nil {
		body = []byte(`{"type":"about:blank","title":"Internal Server Error","status":500}`)
		p.Status = http.StatusInternalServerError
	}
	h := w.Header()
	h.Set("Content-Type", ContentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if p.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((p.RetryAfter+time.Second-1)/time.Second)))
	}
	w.WriteHeader(p.Status)
	_, _ = w.Write(body)
}

// Unavailable reports whether err means the database could not be reached or
// went away (as opposed to rejecting the query): a 503, worth a retry.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) || pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, net.ErrClosed) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case len(pgErr.Code) == 5 && pgErr.Code[:2] == "08": // connection exception
			return true
		case pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03", pgErr.Code == "53300":
			// admin/crash shutdown, cannot connect now, too many connections
			return true
		}
		return false
	}
	var netErr net.Error
	return errors.As(err, &netErr)
}

// DatabaseError writes a 503 when err means the database is unavailable and
// a 500 otherwise, without leaking err's text to the client.
func DatabaseError(w http.ResponseWriter, r *http.Request, err error) {
	if r != nil && r.Context().Err() != nil && errors.Is(err, context.Canceled) {
		// The client hung up; nobody reads this answer, but logs and
		// metrics should not count it as a server error.
		Write(w, r, New(StatusClientClosedRequest, "client-closed-request", "Client closed request", ""))
		return
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22") {
		// A data exception: a value the database cannot take (a NUL
		// character, a number out of range). The client's data; nothing
		// was written.
		Write(w, r, New(http.StatusUnprocessableEntity, "invalid-data", "Invalid data",
			"A value of the request cannot be stored: "+pgErr.Message+"."))
		return
	}
	if Unavailable(err) {
		p := New(http.StatusServiceUnavailable, "database-unavailable", "Database unavailable",
			"The database could not be reached. Retry the request: its transaction either did not commit, or did and the retry returns its result.")
		p.RetryAfter = time.Second
		Write(w, r, p)
		return
	}
	Write(w, r, New(http.StatusInternalServerError, "internal", "Internal server error", ""))
}
