package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgonce/pgonce/idempotency"
	"github.com/pgonce/pgonce/internal/problem"
	"github.com/pgonce/pgonce/metrics"
	"github.com/pgonce/pgonce/runner"
)

// Defaults for Config.
const (
	MaxBodyBytesDefault   = 64 << 10
	RequestTimeoutDefault = 10 * time.Second
)

// AnonymousPrincipal is the principal of every request when
// Config.AllowAnonymous is set and no token is configured.
const AnonymousPrincipal = "anonymous"

// Config configures the API server.
type Config struct {
	Pool   *pgxpool.Pool
	Runner *runner.Runner

	// Tokens maps each API token to the principal (client name) it
	// authenticates, sent as "Authorization: Bearer <token>". The principal
	// scopes idempotency keys: one client never sees another's.
	Tokens map[string]string

	// AllowAnonymous serves /api without tokens, every request as
	// AnonymousPrincipal. Only for demos and tests; New refuses an empty
	// Tokens otherwise.
	AllowAnonymous bool

	// MessageDomain is the Message-ID domain of emails. Defaults to
	// jobs.DomainDefault.
	MessageDomain string

	// MaxBodyBytes caps request bodies (413 above). Defaults to 64 KiB.
	MaxBodyBytes int64

	// RequestTimeout bounds each request's database work (503 past it).
	// Defaults to 10 s.
	RequestTimeout time.Duration

	// IdempotencyKeyLifetime is how long a stored answer to an
	// Idempotency-Key request is replayed. Defaults to 24 h.
	IdempotencyKeyLifetime time.Duration

	// Sources names the configured data sources (POST/GET /api/sync/{source}).
	Sources []string

	// PaymentMaxAttempts is how often a payment's charge is tried. Defaults
	// to jobs.PaymentMaxAttemptsDefault.
	PaymentMaxAttempts int

	// AdminUser and AdminPassword guard the operator routes (/metrics,
	// /riverui/) with HTTP Basic authentication, apart from the API tokens.
	// Unset, those routes refuse every request.
	AdminUser, AdminPassword string

	// Metrics, when set, counts requests and serves GET /metrics.
	Metrics *metrics.Metrics

	// RiverUI, when set, is served under /riverui/.
	RiverUI http.Handler

	// Logger receives one line per request. Defaults to slog.Default().
	Logger *slog.Logger
}

// Server serves the HTTP API.
type Server struct {
	cfg         Config
	tokens      map[[32]byte]string
	mux         *http.ServeMux
	idempotency *idempotency.Layer
}

// New validates cfg and returns a server.
func New(cfg *Config) (*Server, error) {
	if cfg == nil || cfg.Pool == nil || cfg.Runner == nil {
		return nil, errors.New("api: Pool and Runner are required")
	}
	c := *cfg
	if len(c.Tokens) == 0 && !c.AllowAnonymous {
		return nil, errors.New("api: no API tokens configured; set some (API_TOKENS) or allow anonymous access explicitly")
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = MaxBodyBytesDefault
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = RequestTimeoutDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	s := &Server{cfg: c, tokens: map[[32]byte]string{}, mux: http.NewServeMux()}
	for token, principal := range c.Tokens {
		if token == "" || principal == "" {
			return nil, errors.New("api: API tokens and principals must not be empty")
		}
		s.tokens[sha256.Sum256([]byte(token))] = principal
	}

	layer, err := idempotency.New(&idempotency.Config{
		DB: c.Pool, Principal: PrincipalFromRequest, Lifetime: c.IdempotencyKeyLifetime,
		MaxBodyBytes: c.MaxBodyBytes, RequestTimeout: c.RequestTimeout, Logger: c.Logger,
	})
	if err != nil {
		return nil, err
	}
	s.idempotency = layer

	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	if c.Metrics != nil {
		c.Metrics.WatchIdempotency(layer.Stats)
		s.mux.Handle("GET /metrics", s.admin(c.Metrics.Handler()))
	}
	if c.RiverUI != nil {
		s.mux.Handle("/riverui/", s.admin(c.RiverUI))
	}
	s.handleAPI("POST /api/users", s.createUser)
	// Operator routes: users' data and jobs of every client.
	s.mux.Handle("GET /api/users/{id}", s.admin(http.HandlerFunc(s.getUser)))
	s.Handle("POST /api/payments", layer.Middleware(http.HandlerFunc(s.createPayment)))
	s.handleAPI("GET /api/payments/{id}", s.getPayment)
	s.handleAPI("POST /api/sync/{source}", s.requestSync)
	s.handleAPI("GET /api/sync/{source}", s.syncStatus)
	s.mux.Handle("GET /api/jobs/{id}", s.admin(http.HandlerFunc(s.getJob)))
	s.mux.Handle("POST /api/jobs/{id}/retry", s.admin(http.HandlerFunc(s.retryJob)))
	return s, nil
}

// Idempotency returns the server's Idempotency-Key layer (for its Stats, or
// to put your own routes behind it).
func (s *Server) Idempotency() *idempotency.Layer { return s.idempotency }

// Handle adds a route to the server, behind authentication when pattern's
// path starts with /api/.
func (s *Server) Handle(pattern string, h http.Handler) {
	if strings.Contains(pattern, "/api/") {
		h = s.authenticate(h)
	}
	s.mux.Handle(pattern, h)
}

func (s *Server) handleAPI(pattern string, h http.HandlerFunc) { s.Handle(pattern, h) }

// Handler returns the server's handler, with panics recovered, request ids
// and request logging.
func (s *Server) Handler() http.Handler {
	var route http.Handler = http.HandlerFunc(s.route)
	if s.cfg.Metrics != nil {
		route = s.cfg.Metrics.HTTP(route) // sees the pattern the mux matched
	}
	return s.requestID(s.logRequests(s.recoverPanics(route)))
}

// admin guards operator routes with HTTP Basic authentication.
func (s *Server) admin(next http.Handler) http.Handler {
	wantUser := sha256.Sum256([]byte(s.cfg.AdminUser))
	wantPass := sha256.Sum256([]byte(s.cfg.AdminPassword))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.AdminUser == "" || s.cfg.AdminPassword == "" {
			problem.Write(w, r, problem.New(http.StatusUnauthorized, "admin-disabled", "Operator access not configured",
				"Set ADMIN_CREDENTIALS (user:password) to use /metrics and /riverui/."))
			return
		}
		user, pass, ok := r.BasicAuth()
		gotUser, gotPass := sha256.Sum256([]byte(user)), sha256.Sum256([]byte(pass))
		if !ok || subtle.ConstantTimeCompare(gotUser[:], wantUser[:])&subtle.ConstantTimeCompare(gotPass[:], wantPass[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="pgonce admin", charset="UTF-8"`)
			problem.Write(w, r, problem.New(http.StatusUnauthorized, "unauthenticated", "Operator credentials required",
				"Send the operator credentials with HTTP Basic authentication."))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// route dispatches to the mux, answering unknown paths (404) and methods
// (405, with Allow) with problems rather than the mux's plain text.
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	h, pattern := s.mux.Handler(r)
	if pattern != "" {
		s.mux.ServeHTTP(w, r) // sets the path values Handler does not
		return
	}
	probe := &statusRecorder{ResponseWriter: discardWriter{header: http.Header{}}}
	h.ServeHTTP(probe, r)
	if probe.status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", probe.Header().Get("Allow"))
		problem.Write(w, r, problem.New(http.StatusMethodNotAllowed, "method-not-allowed", "Method not allowed",
			r.Method+" is not allowed on "+r.URL.Path+"; allowed: "+probe.Header().Get("Allow")+"."))
		return
	}
	problem.Write(w, r, problem.New(http.StatusNotFound, "not-found", "Not found", "No route for "+r.Method+" "+r.URL.Path+"."))
}

// discardWriter is a ResponseWriter that keeps headers and drops the body.
type discardWriter struct{ header http.Header }

func (d discardWriter) Header() http.Header         { return d.header }
func (d discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d discardWriter) WriteHeader(int)             {}

type ctxKey int

const (
	principalKey ctxKey = iota
	requestIDKey
)

// Principal returns the authenticated client of the request, or "".
func Principal(ctx context.Context) string {
	p, _ := ctx.Value(principalKey).(string)
	return p
}

// PrincipalFromRequest is Principal for a request, erroring when there is
// none; it is what the idempotency layer scopes keys by.
func PrincipalFromRequest(r *http.Request) (string, error) {
	if p := Principal(r.Context()); p != "" {
		return p, nil
	}
	return "", errors.New("api: request is not authenticated")
}

// RequestID returns the request's id (the X-Request-Id header, or one made up).
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey).(string)
	return id
}

func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(s.tokens) == 0 && s.cfg.AllowAnonymous {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey, AnonymousPrincipal)))
			return
		}
		auth := r.Header.Get("Authorization")
		scheme, token, ok := strings.Cut(auth, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pgonce"`)
			problem.Write(w, r, problem.New(http.StatusUnauthorized, "unauthenticated", "Authentication required",
				"Send an API token as \"Authorization: Bearer <token>\"."))
			return
		}
		principal, found := s.tokens[sha256.Sum256([]byte(strings.TrimSpace(token)))]
		if !found {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pgonce", error="invalid_token"`)
			problem.Write(w, r, problem.New(http.StatusUnauthorized, "invalid-token", "Invalid API token", "The API token is not known."))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey, principal)))
	})
}

func (s *Server) requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if id == "" || len(id) > 128 || !printableASCII(id) {
			var b [12]byte
			_, _ = rand.Read(b[:])
			id = hex.EncodeToString(b[:])
		}
		w.Header().Set("X-Request-Id", id)
		// The id also goes into the metadata of every job the request enqueues.
		ctx := runner.WithRequestID(context.WithValue(r.Context(), requestIDKey, id), id)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		level := slog.LevelInfo
		if rec.status >= 500 {
			level = slog.LevelWarn
		}
		s.cfg.Logger.Log(r.Context(), level, "http request",
			"method", r.Method, "path", r.URL.Path, "status", rec.status,
			"duration_ms", float64(time.Since(start).Microseconds())/1000, "request_id", RequestID(r.Context()))
	})
}

func (s *Server) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
					panic(v)
				}
				s.cfg.Logger.Error("http handler panicked", "panic", fmt.Sprint(v), "path", r.URL.Path, "request_id", RequestID(r.Context()))
				problem.Write(w, r, problem.New(http.StatusInternalServerError, "internal", "Internal server error", ""))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.cfg.Pool.Ping(ctx); err != nil {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("database unreachable\n"))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// writeJSON sends v as JSON with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encoding response", http.StatusInternalServerError)
		return
	}
	body = append(body, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func pathID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		problem.Write(w, r, problem.New(http.StatusBadRequest, "invalid-id", "Invalid id", "The id in the path must be a positive integer."))
		return 0, false
	}
	return id, true
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
