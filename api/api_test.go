package api_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgonce/pgonce/api"
	"github.com/pgonce/pgonce/internal/problem"
	"github.com/pgonce/pgonce/internal/testdb"
	"github.com/pgonce/pgonce/runner"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

const token = "test-token-0123456789"

const adminPassword = "admin-password-0123"

// asAdmin are the headers of an operator's request.
var asAdmin = []string{"Authorization", "Basic " + base64.StdEncoding.EncodeToString([]byte("ops:"+adminPassword))}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type fixture struct {
	pool *pgxpool.Pool
	srv  *httptest.Server
	r    *runner.Runner
}

func setup(t *testing.T, pool *pgxpool.Pool) *fixture {
	t.Helper()
	if pool == nil {
		pool = testdb.New(t, nil).Pool
	}
	r, err := runner.New(pool, &runner.Config{InsertOnly: true, Logger: quiet})
	require.NoError(t, err)
	s, err := api.New(&api.Config{Pool: pool, Runner: r, Tokens: map[string]string{token: "client-a"}, Logger: quiet,
		MaxBodyBytes: 1024, RequestTimeout: 3 * time.Second, AdminUser: "ops", AdminPassword: adminPassword})
	require.NoError(t, err)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return &fixture{pool: pool, srv: srv, r: r}
}

func (f *fixture) do(t *testing.T, method, path, contentType, body string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, raw
}

func requireProblem(t *testing.T, resp *http.Response, raw []byte, status int, slug string) {
	t.Helper()
	require.Equal(t, status, resp.StatusCode, "body: %s", raw)
	require.Equal(t, problem.ContentType, resp.Header.Get("Content-Type"))
	var p map[string]any
	require.NoError(t, json.Unmarshal(raw, &p))
	require.Equal(t, problem.TypeBase+slug, p["type"])
	require.EqualValues(t, status, p["status"])
	require.NotEmpty(t, p["title"])
}

func (f *fixture) rows(t *testing.T) (users, jobsN int) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, f.pool.QueryRow(ctx, `SELECT count(*) FROM users`).Scan(&users))
	require.NoError(t, f.pool.QueryRow(ctx, `SELECT count(*) FROM river_job`).Scan(&jobsN))
	return users, jobsN
}

func TestCreateUser(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	resp, raw := f.do(t, "POST", "/api/users", "application/json", `{"email":"ada@example.com","name":"Ada"}`)
	require.Equal(t, http.StatusCreated, resp.StatusCode, string(raw))
	var first api.CreateUserResponse
	require.NoError(t, json.Unmarshal(raw, &first))
	require.True(t, first.Created)
	require.False(t, first.WelcomeEmail.Duplicate)
	require.NotEmpty(t, resp.Header.Get("X-Request-Id"))

	resp, raw = f.do(t, "POST", "/api/users", "application/json; charset=utf-8", `{"email":"ADA@example.com"}`)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(raw))
	var again api.CreateUserResponse
	require.NoError(t, json.Unmarshal(raw, &again))
	require.False(t, again.Created)
	require.True(t, again.WelcomeEmail.Duplicate)
	require.Equal(t, first.WelcomeEmail.JobID, again.WelcomeEmail.JobID)
	require.Equal(t, first.User.ID, again.User.ID)
	require.Equal(t, "Ada", first.User.Name)
	// Users are shared by every API client: another request for the same
	// mailbox learns its id, not what the first request stored.
	require.Equal(t, "ADA@example.com", again.User.Email)
	require.Empty(t, again.User.Name)
	require.Nil(t, again.User.CreatedAt)
	require.NotContains(t, string(raw), "Ada\"")

	resp, raw = f.do(t, "GET", "/api/users/"+itoa(first.User.ID), "", "", asAdmin...)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(raw))
	require.Contains(t, string(raw), `"status":"queued"`)

	resp, raw = f.do(t, "GET", "/api/jobs/"+itoa(first.WelcomeEmail.JobID), "", "", asAdmin...)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(raw))
	require.Contains(t, string(raw), `"kind":"welcome_email"`)

	// Users' data and jobs are for operators, not for API clients.
	resp, raw = f.do(t, "GET", "/api/users/"+itoa(first.User.ID), "", "")
	requireProblem(t, resp, raw, 401, "unauthenticated")
	resp, raw = f.do(t, "GET", "/api/jobs/"+itoa(first.WelcomeEmail.JobID), "", "")
	requireProblem(t, resp, raw, 401, "unauthenticated")
}

// Bad input: a 4xx problem and nothing written.
func TestCreateUser_BadInput(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	tests := []struct {
		name, contentType, body string
		status                  int
		slug                    string
	}{
		{"malformed JSON", "application/json", `{"email":`, 400, "invalid-json"},
		{"null", "application/json", `null`, 400, "invalid-json"},
		{"not an object", "application/json", `["ada@example.com"]`, 400, "invalid-json"},
		{"empty body", "application/json", ``, 400, "invalid-json"},
		{"unknown field", "application/json", `{"email":"ada@example.com","admin":true}`, 400, "invalid-json"},
		{"trailing data", "application/json", `{"email":"ada@example.com"} {"email":"b@example.com"}`, 400, "invalid-json"},
		{"member twice", "application/json", `{"email":"ada@example.com","email":"eve@example.com"}`, 400, "invalid-json"},
		{"member twice in another case", "application/json", `{"email":"ada@example.com","Email":"eve@example.com"}`, 400, "invalid-json"},
		{"wrong type", "application/json", `{"email":42}`, 400, "invalid-json"},
		{"missing email", "application/json", `{"name":"Ada"}`, 422, "invalid-email"},
		{"invalid email", "application/json", `{"email":"not-an-address"}`, 422, "invalid-email"},
		{"display name", "application/json", `{"email":"Ada <ada@example.com>"}`, 422, "invalid-email"},
		{"no domain", "application/json", `{"email":"ada@"}`, 422, "invalid-email"},
		{"too long email", "application/json", `{"email":"` + strings.Repeat("a", 250) + `@example.com"}`, 422, "invalid-email"},
		{"too long name", "application/json", `{"email":"ada@example.com","name":"` + strings.Repeat("n", 201) + `"}`, 422, "invalid-name"},
		{"NUL in name", "application/json", `{"email":"ada@example.com","name":"a\u0000b"}`, 422, "invalid-name"},
		{"invalid UTF-8", "application/json", "{\"email\":\"ada@example.com\",\"name\":\"\xff\"}", 400, "invalid-json"},
		{"huge body", "application/json", `{"email":"ada@example.com","name":"` + strings.Repeat("n", 5000) + `"}`, 413, "body-too-large"},
		{"wrong content type", "text/plain", `{"email":"ada@example.com"}`, 415, "unsupported-media-type"},
		{"form content type", "application/x-www-form-urlencoded", `email=ada@example.com`, 415, "unsupported-media-type"},
		{"no content type", "", `{"email":"ada@example.com"}`, 415, "unsupported-media-type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, raw := f.do(t, "POST", "/api/users", tt.contentType, tt.body)
			requireProblem(t, resp, raw, tt.status, tt.slug)
		})
	}
	users, jobsN := f.rows(t)
	require.Zero(t, users)
	require.Zero(t, jobsN)

	resp, raw := f.do(t, "GET", "/api/users/abc", "", "", asAdmin...)
	requireProblem(t, resp, raw, 400, "invalid-id")
	resp, raw = f.do(t, "GET", "/api/users/12345", "", "", asAdmin...)
	requireProblem(t, resp, raw, 404, "user-not-found")
	resp, raw = f.do(t, "GET", "/api/nothing", "", "")
	requireProblem(t, resp, raw, 404, "not-found")
	resp, raw = f.do(t, "DELETE", "/api/users/1", "", "")
	requireProblem(t, resp, raw, 405, "method-not-allowed")
	require.Contains(t, resp.Header.Get("Allow"), "GET")
}

func TestAuth(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	for _, auth := range []string{"", "Bearer", "Bearer wrong-token-0000000000", "Basic dXNlcjpwYXNz", token} {
		req, err := http.NewRequest("POST", f.srv.URL+"/api/users", strings.NewReader(`{"email":"x@example.com"}`))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "Authorization %q", auth)
		require.Equal(t, problem.ContentType, resp.Header.Get("Content-Type"), string(raw))
		require.NotEmpty(t, resp.Header.Get("WWW-Authenticate"))
	}
	users, _ := f.rows(t)
	require.Zero(t, users)

	// Health endpoints stay open and say nothing more than ok.
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(f.srv.URL + path)
		require.NoError(t, err)
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "ok\n", string(raw))
	}
	_, err := api.New(&api.Config{Pool: f.pool, Runner: f.r})
	require.Error(t, err, "no tokens and no explicit anonymous access")
}

// The database cannot be reached: 503 with Retry-After, and readiness fails.
func TestCreateUser_DatabaseUnreachable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close()) // nothing listens there now
	cfg, err := pgxpool.ParseConfig("postgres://postgres@" + addr + "/postgres?connect_timeout=1")
	require.NoError(t, err)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	f := setup(t, pool)
	resp, raw := f.do(t, "POST", "/api/users", "application/json", `{"email":"ada@example.com"}`)
	requireProblem(t, resp, raw, 503, "database-unavailable")
	require.Equal(t, "1", resp.Header.Get("Retry-After"))

	resp2, err := http.Get(f.srv.URL + "/readyz")
	require.NoError(t, err)
	resp2.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp2.StatusCode)
}

// The connection dies in the middle of the signup transaction (after the
// user and the job were written, before the email log): 503 and nothing
// half-written.
func TestCreateUser_ConnectionLostMidTransaction(t *testing.T) {
	t.Parallel()
	db := testdb.New(t, nil)
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, `
		CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$;
		CREATE TRIGGER die BEFORE INSERT ON email_log FOR EACH ROW EXECUTE FUNCTION die();`)
	require.NoError(t, err)
	f := setup(t, db.Pool)
	resp, raw := f.do(t, "POST", "/api/users", "application/json", `{"email":"ada@example.com"}`)
	requireProblem(t, resp, raw, 503, "database-unavailable")
	users, jobsN := f.rows(t)
	require.Zero(t, users)
	require.Zero(t, jobsN)
}

// SC-3 (b) over HTTP: retrying a discarded unique job whose key a live
// duplicate holds is a 409 naming the live job, not a 500.
func TestRetryJob_Conflict(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	ctx := context.Background()
	resp, raw := f.do(t, "POST", "/api/users", "application/json", `{"email":"ada@example.com"}`)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	var first api.CreateUserResponse
	require.NoError(t, json.Unmarshal(raw, &first))

	// The job is discarded; a fresh duplicate revives the email.
	_, err := f.pool.Exec(ctx, `UPDATE river_job SET state = 'discarded', finalized_at = now() WHERE id = $1`, first.WelcomeEmail.JobID)
	require.NoError(t, err)
	resp, raw = f.do(t, "POST", "/api/users", "application/json", `{"email":"ada@example.com"}`)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var second api.CreateUserResponse
	require.NoError(t, json.Unmarshal(raw, &second))
	require.False(t, second.WelcomeEmail.Duplicate)

	resp, raw = f.do(t, "POST", "/api/jobs/"+itoa(first.WelcomeEmail.JobID)+"/retry", "", "", asAdmin...)
	requireProblem(t, resp, raw, 409, "duplicate-live-job")
	var p map[string]any
	require.NoError(t, json.Unmarshal(raw, &p))
	require.EqualValues(t, second.WelcomeEmail.JobID, p["live_job_id"])

	resp, raw = f.do(t, "POST", "/api/jobs/999999/retry", "", "", asAdmin...)
	requireProblem(t, resp, raw, 404, "job-not-found")
}

func TestPanicsBecome500Problems(t *testing.T) {
	t.Parallel()
	f := setup(t, nil)
	s, err := api.New(&api.Config{Pool: f.pool, Runner: f.r, AllowAnonymous: true, Logger: quiet})
	require.NoError(t, err)
	s.Handle("GET /api/boom", http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("secret detail") }))
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/api/boom")
	require.NoError(t, err)
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	requireProblem(t, resp, raw, 500, "internal")
	require.NotContains(t, string(raw), "secret")
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
